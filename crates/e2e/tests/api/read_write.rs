//! The happy paths: what is written can be read back, exactly, under any valid key.

use kv_e2e::app::{assert_failure, json, spawn_app};

#[tokio::test]
async fn a_posted_value_can_be_read_back_and_is_in_sqlite() {
    let app = spawn_app().await;

    let (status, body) = json(app.post_json(r#"{"temperature": 21.5}"#).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["success"], true);
    let sentence = body["data"].as_str().expect("data is a sentence");
    assert!(
        sentence.contains("temperature") && sentence.contains("21.5"),
        "{sentence}"
    );

    let (status, body) = json(app.get_key("temperature").await).await;
    assert_eq!(
        (status, body),
        (200, serde_json::json!({"success": true, "data": 21.5}))
    );
    assert_eq!(app.db_value("temperature"), Some(21.5));
    app.shutdown().await;
}

#[tokio::test]
async fn reading_a_missing_key_returns_404_with_the_contract_message() {
    let app = spawn_app().await;

    assert_failure(
        app.get_key("nothing-here").await,
        404,
        "Value for key 'nothing-here' not found",
    )
    .await;
    app.shutdown().await;
}

#[tokio::test]
async fn integers_fractions_and_extremes_are_stored_exactly() {
    let app = spawn_app().await;
    let values = [
        ("integer", "42", 42.0),
        ("negative", "-7", -7.0),
        ("fraction", "0.1", 0.1),
        ("exponent", "-2.5e-8", -2.5e-8),
        ("huge", "1.7976931348623157e308", f64::MAX),
        ("tiny", "5e-324", 5e-324),
    ];

    for (key, literal, _) in values {
        let response = app.post_json(&format!(r#"{{"{key}": {literal}}}"#)).await;
        assert_eq!(response.status(), 200, "{key}");
    }

    for (key, _, expected) in values {
        let (status, body) = json(app.get_key(key).await).await;
        assert_eq!(
            (status, body["data"].as_f64()),
            (200, Some(expected)),
            "{key}"
        );
        assert_eq!(app.db_value(key), Some(expected), "{key}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn unicode_and_url_special_keys_round_trip() {
    let app = spawn_app().await;
    let keys = [
        "température",
        "ключ",
        "键/值",
        "emoji 🦀",
        "nul\u{0}inside",
        " spaces and\ttabs ",
        "a&b=c?d#e%f+g",
        &"é".repeat(128),
    ];

    for (value, key) in keys.iter().enumerate() {
        app.put(key, value as f64).await;
    }

    for (value, key) in keys.iter().enumerate() {
        let (status, body) = json(app.get_key(key).await).await;
        assert_eq!(
            (status, body["data"].as_f64()),
            (200, Some(value as f64)),
            "{key}"
        );
        assert_eq!(app.db_value(key), Some(value as f64), "{key}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn writing_an_existing_key_replaces_its_value() {
    let app = spawn_app().await;

    app.put("counter", 1.0).await;
    app.put("counter", 2.0).await;

    let (_, body) = json(app.get_key("counter").await).await;
    assert_eq!(body["data"], 2.0);
    assert_eq!(app.db_row_count(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn restarting_the_back_server_keeps_all_data() {
    let mut app = spawn_app().await;
    for i in 0..20 {
        app.put(&format!("key-{i}"), f64::from(i) * 1.5).await;
    }

    app.stop_back().await;
    app.start_back().await;

    for i in 0..20 {
        let (status, body) = json(app.get_key(&format!("key-{i}")).await).await;
        assert_eq!(
            (status, body["data"].as_f64()),
            (200, Some(f64::from(i) * 1.5))
        );
    }
    assert_eq!(app.db_row_count(), 20);
    app.shutdown().await;
}
