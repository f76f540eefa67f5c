//! The evaluator on tiny hand-made truth and links files.

mod common;

use common::Scratch;
use idlink_sim::{SimError, evaluate};

/// Devices:
/// - d-phone: owned by a1, signed in by a1
/// - d-laptop: owned by a1, never signed in (inference target)
/// - d-tablet: shared by a1 and a2, a2 signed in
/// - d-kid: owned by nobody with an account (household non-signer)
/// - d-bot: a bot
/// - d-gone: erased device owned by a3
/// - d-opt: owned by a4 (opted out, never signed in here)
/// - d-dormant: owned by a5, whose account never appears in events
const TRUTH: &str = r#"{"scenario":{"people":5,"days":1,"seed":1},
"devices":[
{"device_id":"d-bot","owners":[],"signed_in":[],"bot":true,"profile":"bot-residential-household"},
{"device_id":"d-dormant","owners":["a5"],"signed_in":[],"bot":false,"profile":"household-nonsigner","household":"h-1"},
{"device_id":"d-gone","owners":["a3"],"signed_in":["a3"],"bot":false,"profile":"signed-in"},
{"device_id":"d-kid","owners":[],"signed_in":[],"bot":false,"profile":"household-nonsigner+no-account","household":"h-1"},
{"device_id":"d-laptop","owners":["a1"],"signed_in":[],"bot":false,"profile":"owner-unsigned+laptop","household":"h-1"},
{"device_id":"d-opt","owners":["a4"],"signed_in":[],"bot":false,"profile":"owner-unsigned","household":"h-2","offices":["office-small-0001"]},
{"device_id":"d-opt2","owners":["a4"],"signed_in":["a4"],"bot":false,"profile":"signed-in","household":"h-2"},
{"device_id":"d-phone","owners":["a1"],"signed_in":["a1"],"bot":false,"profile":"signed-in","household":"h-1"},
{"device_id":"d-tablet","owners":["a1","a2"],"signed_in":["a2"],"bot":false,"profile":"shared-tablet-signed","household":"h-1"}
],
"opted_out":["a4"],
"erased_accounts":["a6"],
"erased_devices":["d-gone"],
"accounts":[
{"account_id":"a1","household":"h-1"},
{"account_id":"a2","household":"h-1","office":"office-small-0001"},
{"account_id":"a4","household":"h-2","office":"office-small-0001"}
]}"#;

fn eval(links: &str) -> idlink_sim::Evaluation {
    let dir = Scratch::new(&format!("eval-{}", links.len()));
    let truth = dir.write("truth.json", TRUTH);
    let links = dir.write("links.jsonl", links);
    evaluate(&truth, &links).expect("evaluate")
}

#[test]
fn perfect_links_score_one_and_count_pairs() {
    let e = eval(concat!(
        r#"{"device_id":"d-phone","links":[{"account_id":"a1","link_type":"login","confidence":1.0,"evidence":{"x":1}}]}"#,
        "\n",
        r#"{"device_id":"d-laptop","links":[{"account_id":"a1","link_type":"inferred","confidence":0.97}]}"#,
        "\n\n",
        r#"{"device_id":"d-tablet","links":[{"account_id":"a2","link_type":"login"},{"account_id":"a1","link_type":"inferred"}],"extra":"ignored"}"#,
        "\n",
        r#"{"device_id":"d-opt2","links":[{"account_id":"a4","link_type":"login"}]}"#,
        "\n",
    ));
    assert_eq!((e.login_links, e.login_correct), (3, 3));
    assert_eq!((e.inferred_links, e.inferred_correct), (2, 2));
    assert_eq!(e.login_precision, 1.0);
    assert_eq!(e.inferred_precision, 1.0);
    // Owned pairs: d-phone/a1, d-laptop/a1, d-tablet/a1, d-tablet/a2,
    // d-opt2/a4 (signed there). Not: bot, erased device, dormant a5
    // (never in events), d-opt/a4 (opted out, never signed in there).
    assert_eq!(e.owned_pairs, 5);
    assert_eq!(e.owned_pairs_found, 5);
    assert_eq!(e.recall, 1.0);
    // Unsigned: d-laptop/a1 and d-tablet/a1.
    assert_eq!((e.unsigned_pairs, e.unsigned_pairs_found), (2, 2));
    let by_kind: Vec<(&str, u64, u64)> = e
        .unsigned_by_device_kind
        .iter()
        .map(|(k, n)| (k.as_str(), n.pairs, n.found))
        .collect();
    assert_eq!(
        by_kind,
        [("laptop", 1, 1), ("shared-tablet-signed", 1, 1)],
        "by the last part of the profile"
    );
    assert!(e.violations.is_empty(), "{:?}", e.violations);
    assert!(e.wrong_inferred.is_empty());
}

#[test]
fn wrong_links_and_violations_are_reported() {
    let e = eval(concat!(
        r#"{"device_id":"d-kid","links":[{"account_id":"a1","link_type":"inferred"}]}"#,
        "\n",
        r#"{"device_id":"d-laptop","links":[{"account_id":"a2","link_type":"inferred"}]}"#,
        "\n",
        r#"{"device_id":"d-dormant","links":[{"account_id":"a2","link_type":"inferred"}]}"#,
        "\n",
        r#"{"device_id":"d-bot","links":[{"account_id":"a1","link_type":"inferred"}]}"#,
        "\n",
        r#"{"device_id":"d-gone","links":[]}"#,
        "\n",
        r#"{"device_id":"d-opt","links":[{"account_id":"a4","link_type":"inferred"},{"account_id":"a2","link_type":"inferred"}]}"#,
        "\n",
        r#"{"device_id":"d-phone","links":[{"account_id":"a6","link_type":"login"}]}"#,
        "\n",
        r#"{"device_id":"d-unknown","links":[{"account_id":"a1","link_type":"probabilistic"}]}"#,
        "\n",
    ));
    assert_eq!((e.login_links, e.login_correct), (1, 0));
    assert_eq!(e.login_precision, 0.0);
    // kid->a1, laptop->a2, dormant->a2, bot->a1, opt->a4 (correct owner),
    // opt->a2, unknown->a1 (unknown types count as inferred).
    assert_eq!((e.inferred_links, e.inferred_correct), (7, 1));
    assert!((e.inferred_precision - 1.0 / 7.0).abs() < 1e-9);
    let v = e.violations.join("\n");
    assert!(v.contains("erased device d-gone"), "{v}");
    assert!(v.contains("erased account a6"), "{v}");
    assert!(v.contains("bot device d-bot"), "{v}");
    assert!(v.contains("opted-out account a4"), "{v}");
    assert_eq!(e.violations.len(), 4, "{v}");
    let reasons: Vec<(&str, &str)> = e
        .wrong_inferred
        .iter()
        .map(|w| (w.device_id.as_str(), w.reason.as_str()))
        .collect();
    assert!(
        reasons.contains(&("d-kid", "household member without account")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("d-dormant", "household member without sign-in")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("d-laptop", "housemate instead of the owner")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("d-opt", "office colleague (small office)")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("d-unknown", "device not in truth")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(d, r)| *d == "d-bot" && r.starts_with("bot")),
        "{reasons:?}"
    );
    assert_eq!(e.wrong_inferred_by_reason.values().sum::<u64>(), 6);
    // d-opt/a4 is not an owned pair (opted out, never signed in there) and
    // d-phone's link points to the wrong account: nothing true was found.
    assert_eq!(e.owned_pairs_found, 0);
    let report = e.to_string();
    assert!(report.contains("inferred links:"), "{report}");
    assert!(report.contains("violations:"), "{report}");
    let json = serde_json::to_value(&e).expect("serialize");
    assert_eq!(json["inferred_links"], 7);
    assert!(json["violations"].is_array());
}

#[test]
fn empty_links_give_full_precision_and_zero_recall() {
    let e = eval("");
    assert_eq!(e.login_precision, 1.0);
    assert_eq!(e.inferred_precision, 1.0);
    assert_eq!(e.owned_pairs, 5);
    assert_eq!(e.recall, 0.0);
}

#[test]
fn wrong_list_is_capped_at_twenty() {
    let mut links = String::new();
    for i in 0..30 {
        links.push_str(&format!(
            "{{\"device_id\":\"d-kid\",\"links\":[{{\"account_id\":\"x{i}\",\"link_type\":\"inferred\"}}]}}\n"
        ));
    }
    let e = eval(&links);
    assert_eq!(e.inferred_links, 30);
    assert_eq!(e.wrong_inferred.len(), 20);
}

#[test]
fn malformed_lines_point_at_the_line() {
    let dir = Scratch::new("eval-bad");
    let truth = dir.write("truth.json", TRUTH);
    let links = dir.write(
        "links.jsonl",
        "{\"device_id\":\"d-kid\",\"links\":[]}\n{not json\n",
    );
    match evaluate(&truth, &links) {
        Err(SimError::Parse { line, file, .. }) => {
            assert_eq!(line, 2);
            assert!(file.ends_with("links.jsonl"));
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    let bad_truth = dir.write("bad-truth.json", "{\"scenario\":");
    assert!(matches!(
        evaluate(&bad_truth, &links),
        Err(SimError::Parse { .. })
    ));
    let missing = dir.path("missing.jsonl");
    assert!(matches!(evaluate(&truth, &missing), Err(SimError::Io(_))));
}
