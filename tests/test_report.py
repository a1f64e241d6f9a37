from harness.results import report

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="6">
<testcase classname="testcases.test_threads" name="test_a[smp4]" time="1.5">
  <properties><property name="accel" value="tcg"/><property name="vcpus" value="4"/></properties>
</testcase>
<testcase classname="testcases.test_fp" name="test_b" time="0.1">
  <failure message="differs: rax">trace</failure></testcase>
<testcase classname="testcases.test_fp" name="test_c" time="0.1">
  <properties><property name="verdict" value="crashed"/></properties>
  <failure message="crashed: kernel BUG">x</failure></testcase>
<testcase classname="testcases.test_riprel" name="test_d" time="0.1">
  <skipped type="pytest.xfail" message="known bug"/></testcase>
<testcase classname="testcases.test_riprel" name="test_e" time="0.1">
  <skipped type="pytest.skip" message="needs 4 vCPUs"/></testcase>
<testcase classname="testcases.test_riprel" name="test_f" time="0.1">
  <failure message="Failed: refused by the kernel: enable: 524">x</failure></testcase>
</testsuite></testsuites>
"""


def test_read_and_summarise(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    results = report.read_junit(path)
    assert [r.outcome for r in results] == [
        "passed",
        "failed",
        "crashed",
        "xfail",
        "skipped",
        "failed",
    ]  # a refused probe is a failure
    table = report.summary_by_family(results)
    assert table["fp"]["failed"] == 1 and table["fp"]["crashed"] == 1
    text = report.format_summary(results, "title")
    assert "CRASHED: test_c" in text and "FAILED: test_b" in text
    html = report.render_html(results, "t", {"kernel": "k"}, tmp_path / "r.html").read_text()
    assert 'class="crashed"' in html and "test_a[smp4]" in html
