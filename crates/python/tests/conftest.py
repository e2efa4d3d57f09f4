"""A skipped test is not a passing one: `make test` fails when any test is skipped (a missing
package must be installed by the Makefile, not waved through)."""


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and exitstatus == 0:
        for report in skipped:
            reporter.write_line(f"SKIPPED counts as a failure here: {report.nodeid}: {report.longrepr}")
        session.exitstatus = 1
