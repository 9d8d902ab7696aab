"""Peak-RSS helpers pasted into the measuring subprocesses of tests/test_estimate.py and
tests/test_logprob_chunks.py (glibc with MALLOC_MMAP_THRESHOLD_=65536: freed tensors leave the RSS).

    script = textwrap.dedent(SCRIPT).replace("#PEAK_RSS_HELPERS", PEAK_RSS_HELPERS)   # rss(), reset(), peak()
"""

PEAK_RSS_HELPERS = '''
import os, re


def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset():
    open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM (peak RSS) to the current RSS
    return rss()


def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
'''
