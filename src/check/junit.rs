//! The check's result as JUnit XML (`--junit FILE`), which CI systems show
//! as test results: one test case for what the check drove (HTTP/1 GETs,
//! on keep-alive and on new connections) and one for the reloads it
//! triggered, each failed with its counts and first samples when it failed.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::report::CheckReport;

/// The XML for `report`.
pub fn junit_xml(report: &CheckReport) -> String {
    let mut suite = TestSuite::new("baton check");
    suite.set_time(Duration::from_secs_f64(report.duration_s));
    suite.add_properties([
        ("target".to_owned(), report.target.clone()),
        ("requests".to_owned(), report.requests.to_string()),
        ("reloads".to_owned(), report.reloads.len().to_string()),
    ]);
    suite.add_test_cases([requests_case(report), reloads_case(report)]);
    let mut junit = Report::new("baton check");
    junit.add_test_suite(suite);
    junit
        .to_string()
        .expect("a report of plain strings serializes")
}

/// The load's requests: failed if any request failed.
fn requests_case(report: &CheckReport) -> TestCase {
    let status = if report.failures.total() == 0 {
        TestCaseStatus::success()
    } else {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
        status
            .set_message(format!(
                "{} of {} requests failed",
                report.failures, report.requests
            ))
            .set_type("failed requests")
            .set_description(
                report
                    .failure_samples
                    .iter()
                    .map(|s| {
                        format!(
                            "at {:.2} s {} after {:.1} ms: {}",
                            s.at_s, s.kind, s.after_ms, s.detail
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        status
    };
    let mut case = TestCase::new("http1-get", status);
    case.set_classname("baton check")
        .set_time(Duration::from_secs_f64(report.duration_s))
        .set_system_out(format!(
            "{} requests, {} ok, latency {}",
            report.requests, report.ok, report.latency_ms
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
    let status = if failed.is_empty() {
        TestCaseStatus::success()
    } else {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
        status
            .set_message(format!(
                "{} of {} reloads failed",
                failed.len(),
                report.reloads.len()
            ))
            .set_type("failed reloads")
            .set_description(failed.join("\n"));
        status
    };
    let mut case = TestCase::new("reloads", status);
    case.set_classname("baton check");
    case
}
