//! The JavaScript SDK and the demo page against a real standalone imcloud:
//! `node --test` (unit tests, then the live tests with IMCLOUD_WS and
//! IMCLOUD_API set) and the browser test (Debian's chromium, headless,
//! driven by playwright-core), whose screenshot is kept in
//! `target/e2e/demo.png`.
//!
//! Needs node (>= 20), chromium (`apt-get install -y chromium`) and
//! playwright-core (`npm ci` in clients/js); `.ci/run` installs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imcloud_testkit::standalone::{sample, scrape, standalone};

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/js")
}

/// Runs `node args` in clients/js off the async runtime; a missing node
/// fails with what to install.
async fn node(args: &[&str], env: Vec<(&'static str, String)>) -> Output {
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(&args)
            .envs(env)
            .current_dir(js_dir())
            .output()
            .expect("node (>= 20) must be installed to test the JavaScript SDK")
    })
    .await
    .expect("node task")
}

fn report(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_passes_its_tests_against_a_live_node() {
    let (imcloud, shutdown) = standalone().await;
    let output = node(
        &["--experimental-websocket", "--test", "test/"],
        vec![
            ("IMCLOUD_WS", imcloud.ws_url.clone()),
            ("IMCLOUD_API", imcloud.api_url.clone()),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", report(&output));
    // The live tests must have run, not been skipped.
    assert!(stdout.contains("# skipped 0"), "{}", report(&output));
    assert!(stdout.contains("# fail 0"), "{}", report(&output));
    shutdown.cancel();
    imcloud.wait().await.expect("stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_page_shows_pushes_in_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install -y chromium (or set CHROMIUM)"
    );
    assert!(
        js_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: cd clients/js && npm ci"
    );
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    let screenshot = target.join("e2e/demo.png");
    std::fs::create_dir_all(screenshot.parent().expect("dir")).expect("mkdir");
    let _ = std::fs::remove_file(&screenshot);

    let (imcloud, shutdown) = standalone().await;
    let output = node(
        &["e2e/demo.e2e.mjs"],
        vec![
            ("IMCLOUD_PAGE", format!("{}/", imcloud.cloud_http_url)),
            ("IMCLOUD_SCREENSHOT", screenshot.display().to_string()),
            ("CHROMIUM", chromium),
        ],
    )
    .await;
    assert!(output.status.success(), "{}", report(&output));
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");

    // What the page did, as the cloud node counted it: a push by key (the
    // second push by mid went to the inbox while offline), two to rooms
    // (its first, then the one it joined), one broadcast.
    let metrics = scrape(&imcloud.cloud_http_url).await;
    for (kind, pushed) in [("key", 1.0), ("room", 2.0), ("broadcast", 1.0)] {
        let series = format!("imcloud_cloud_delivered_total{{kind=\"{kind}\"}}");
        assert_eq!(sample(&metrics, &series), pushed, "{series}");
    }
    shutdown.cancel();
    imcloud.wait().await.expect("stopped");
}
