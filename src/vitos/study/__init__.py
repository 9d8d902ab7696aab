"""`vitos study`: seeds x schedules x reward ablations from one warm start per seed, every run evaluated on
the same test questions with intervals and paired tests (vitos.study.run); the evaluation of a run
(vitos.study.evaluate) and the plots (vitos.study.plots) are shared with `vitos demo`."""
