//! `GET /ui` in a real browser (headless Chromium, Debian package `chromium`) on a
//! real 3-node cluster: the page shows the primary (its table row, the lease line and,
//! in the screenshot, the row's highlight) before and after a failover, uses no
//! script or external asset, and every member serves it.

mod common;
mod pg;

use std::path::Path;
use std::process::Command;

use anyhow::ensure;
use pg::{PgCluster, PgOptions, SLOW_WAIT, have_pg};

/// The primary row's background in the page's style sheet.
const PRIMARY_RGB: [u8; 3] = [0xb7, 0xf0, 0xb1];

fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but chromium is not installed (apt-get install chromium)"
        );
        eprintln!("skipped: no chromium");
    }
    found
}

fn browser(bin: &str, dir: &Path, args: &[&str], url: &str) -> anyhow::Result<Vec<u8>> {
    // A profile of its own per call: parallel tests never share one.
    let profile = tempfile::tempdir_in(dir)?;
    let out = Command::new("timeout")
        .arg("60")
        .arg(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .current_dir(dir)
        .output()?;
    ensure!(
        out.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// The DOM after the browser loaded `url`.
fn dom(bin: &str, dir: &Path, url: &str) -> anyhow::Result<String> {
    Ok(String::from_utf8(browser(bin, dir, &["--dump-dom"], url)?)?)
}

/// Rows of the screenshot that show the primary's highlight.
fn highlighted_rows(bin: &str, dir: &Path, url: &str) -> anyhow::Result<usize> {
    let file = dir.join(format!("ui-{}.png", std::process::id()));
    let _ = std::fs::remove_file(&file);
    browser(
        bin,
        dir,
        &[
            "--window-size=1100,700",
            &format!("--screenshot={}", file.display()),
        ],
        url,
    )?;
    let decoder = png::Decoder::new(std::fs::File::open(&file)?);
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    ensure!(info.width == 1100 && info.height == 700, "{info:?}");
    let px = info.color_type.samples();
    let rows = buf[..info.buffer_size()]
        .chunks(info.line_size)
        .filter(|line| line.chunks(px).filter(|p| p[..3] == PRIMARY_RGB).count() > 100)
        .count();
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_status_page_shows_the_primary_in_a_browser() {
    if !have_pg() {
        return;
    }
    let Some(bin) = chromium() else { return };
    let (mut c, p, replicas) = PgCluster::start_healthy(PgOptions::default()).await;
    let dir = c.temp_path().to_path_buf();
    let urls: std::collections::BTreeMap<u64, String> = c
        .ids()
        .into_iter()
        .map(|id| {
            (
                id,
                format!("http://{}:{}/ui", c.node(id).host, c.node(id).rest_port),
            )
        })
        .collect();
    let url = |id: u64| urls[&id].clone();
    let p_name = c.node(p).name.clone();

    let (st, raw) = c.http(replicas[0], "GET", "/ui").await.expect("/ui");
    assert_eq!(st, 200);
    for banned in ["<script", "http://", "https://", "src="] {
        assert!(
            !raw.contains(banned),
            "the page must be self-contained: {banned}"
        );
    }
    let page = dom(bin, &dir, &url(replicas[0])).expect("browser");
    assert!(
        page.contains(&format!("<tr class=\"primary\"><td>{p_name}</td>")),
        "{page}"
    );
    assert!(
        page.contains(&format!("Leader lease: <b>{p_name}</b>")),
        "{page}"
    );
    assert!(page.contains("ms left of"), "{page}");
    let rows = highlighted_rows(bin, &dir, &url(replicas[0])).expect("screenshot");
    assert!(
        rows >= 10,
        "the primary's row is not highlighted ({rows} pixel rows)"
    );

    // After kill -9 of the primary's host: the page on a survivor shows the new one
    // and the failover in its history.
    c.kill_host(p);
    let q = c.wait_primary(&[p], SLOW_WAIT).await;
    let q_name = c.node(q).name.clone();
    let page = c
        .wait_for("the new primary on the page", SLOW_WAIT, async || {
            let page = dom(bin, &dir, &url(q))?;
            ensure!(page.contains(&format!("<tr class=\"primary\"><td>{q_name}</td>")));
            ensure!(page.contains("<table id=\"history\">"), "no history yet");
            Ok(page)
        })
        .await;
    assert!(!page.contains(&format!("<tr class=\"primary\"><td>{p_name}</td>")));
    let rows = highlighted_rows(bin, &dir, &url(q)).expect("screenshot");
    assert!(
        rows >= 10,
        "the new primary's row is not highlighted ({rows} pixel rows)"
    );
}
