//! Conformance scenarios 158–159 (approval gates).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use executionkit::{ApprovalDecision, ApprovalGate, ApprovalRequest, OnTimeout};

fn slow() -> ApprovalGate {
    ApprovalGate::new(|_req: ApprovalRequest| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(true)
    })
}

fn delete() -> ApprovalRequest {
    ApprovalRequest::new("delete", "file.txt")
}

#[tokio::test]
async fn s158_timeouts_raise_approve_or_deny() {
    let gate = slow().timeout(Duration::from_millis(50), OnTimeout::Raise);
    for err in [
        gate.request(delete()).await.unwrap_err(),
        gate.require(delete()).await.unwrap_err(),
    ] {
        // Denied, not a (retryable) timeout; the metadata says why.
        assert!(err.is_approval_denied(), "{err:?}");
        assert!(!err.is_timeout());
        assert_eq!(err.metadata()["reason"], "timeout");
        for part in ["delete", "file.txt", "0.05"] {
            assert!(err.message().contains(part), "{}", err.message());
        }
    }

    let d = slow()
        .timeout(Duration::from_millis(50), OnTimeout::Approve)
        .request(delete())
        .await
        .unwrap();
    assert!(d.approved && d.reason.contains("timed out"));

    let gate = slow().timeout(Duration::from_millis(50), OnTimeout::Deny);
    let d = gate.request(delete()).await.unwrap();
    assert!(!d.approved && d.reason.contains("timed out"));
    let err = gate.require(delete()).await.unwrap_err();
    assert!(err.is_approval_denied());
}

#[tokio::test]
async fn s159_decisions_are_honoured() {
    let manual = ApprovalGate::new(|_r: ApprovalRequest| async {
        Ok(ApprovalDecision::deny("manual deny"))
    });
    assert_eq!(
        manual.request(delete()).await.unwrap(),
        ApprovalDecision::deny("manual deny")
    );
    let yes = ApprovalGate::new(|_r: ApprovalRequest| async { Ok(true) });
    assert!(yes.request(delete()).await.unwrap().approved);
    let no = ApprovalGate::blocking(|_r: ApprovalRequest| Ok(false));
    let d = no.request(delete()).await.unwrap();
    assert!(!d.approved && d.reason.is_empty());

    let err = ApprovalGate::deny_all("forbidden")
        .require(delete())
        .await
        .unwrap_err();
    assert!(err.is_approval_denied());
    assert_eq!(
        err.message(),
        "Approval denied for delete file.txt: forbidden"
    );
    ApprovalGate::allow_all().require(delete()).await.unwrap();

    let quick = ApprovalGate::blocking(|_r: ApprovalRequest| Ok(true))
        .timeout(Duration::from_secs(10), OnTimeout::Raise);
    assert!(quick.request(delete()).await.unwrap().approved);

    // Callback errors propagate.
    let broken = ApprovalGate::new(|_r: ApprovalRequest| async {
        Err::<bool, _>(executionkit::Error::new(
            executionkit::ErrorKind::Provider,
            "down",
        ))
    });
    assert_eq!(
        broken.request(delete()).await.unwrap_err().message(),
        "down"
    );
}
