//! The check's result as JUnit XML (`--junit FILE`), which CI systems show
//! as test results: one test case for each scenario the check drove (see
//! [`super::scenario`]) and one for the reloads it triggered, each failed
//! with its counts and first samples when it failed.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::report::{CheckReport, ScenarioRecord};

/// The XML for `report`.
pub fn junit_xml(report: &CheckReport) -> String {
    let mut suite = TestSuite::new("baton check");
    suite.set_time(Duration::from_secs_f64(report.duration_s));
    suite.add_properties([
        ("target".to_owned(), report.target.clone()),
        ("requests".to_owned(), report.requests.to_string()),
        ("reloads".to_owned(), report.reloads.len().to_string()),
    ]);
    suite.add_test_cases(report.scenarios.iter().map(|s| scenario_case(report, s)));
    suite.add_test_case(reloads_case(report));
    let mut junit = Report::new("baton check");
    junit.add_test_suite(suite);
    junit
        .to_string()
        .expect("a report of plain strings serializes")
}

/// One scenario's requests: failed if any of them failed.
fn scenario_case(report: &CheckReport, scenario: &ScenarioRecord) -> TestCase {
    let samples: Vec<String> = report
        .failure_samples
        .iter()
        .filter(|s| s.scenario == scenario.name)
        .map(|s| {
            format!(
                "at {:.2} s {} after {:.1} ms: {}",
                s.at_s, s.kind, s.after_ms, s.detail
            )
        })
        .collect();
    let status = status(
        scenario.failures.total() > 0,
        format!(
            "{} of {} requests failed",
            scenario.failures, scenario.requests
        ),
        "failed requests",
        &samples,
    );
    let mut case = TestCase::new(scenario.name.clone(), status);
    case.set_classname("baton check")
        .set_time(Duration::from_secs_f64(report.duration_s))
        .set_system_out(format!(
            "{} requests, {} ok",
            scenario.requests, scenario.ok
        ));
    case
}

/// The reloads the check triggered: failed if any did not succeed.
fn reloads_case(report: &CheckReport) -> TestCase {
    let failed: Vec<String> = report
        .reloads
        .iter()
        .filter(|r| !r.ok)
        .map(|r| {
            format!(
                "at {:.2} s: {}",
                r.at_s,
                r.detail.as_deref().unwrap_or("failed")
            )
        })
        .collect();
    let status = status(
        !failed.is_empty(),
        format!(
            "{} of {} reloads failed",
            failed.len(),
            report.reloads.len()
        ),
        "failed reloads",
        &failed,
    );
    let mut case = TestCase::new("reloads", status);
    case.set_classname("baton check");
    case
}

/// Success, or a failure with `message`, its `kind` and one line of
/// description for each of `details`.
fn status(failed: bool, message: String, kind: &str, details: &[String]) -> TestCaseStatus {
    if !failed {
        return TestCaseStatus::success();
    }
    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
    status
        .set_message(message)
        .set_type(kind)
        .set_description(details.join("\n"));
    status
}
