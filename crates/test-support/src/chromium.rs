//! Looking at HTML pages the way a person would: headless Chromium
//! (Debian's `chromium`, scripts/host-packages.txt) renders a page from
//! disk and gives back its DOM ([`dump_dom`]) or a picture of it
//! ([`screenshot`], decoded by [`Picture`]). [`check_report`] checks a
//! `testbed ci` HTML report with them.
//!
//! Each run has its own profile, HOME and XDG folders in a temporary
//! folder, and flags that turn off everything Chromium would fetch
//! (component updates, sync, metrics, extensions): a page from disk is
//! rendered without a network request. Each run is bounded in time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::process::{output_within, text};

/// How long one Chromium run may take: it renders a page from disk in
/// about a second; a hang fails the test instead of stalling it.
pub const LIMIT: Duration = Duration::from_secs(120);

/// Runs headless Chromium on `page` with `args` (after the common ones),
/// in a fresh profile in `dir`; its output, or a test failure with its
/// standard error.
fn run(dir: &Path, page: &Path, args: &[String]) -> Output {
    let url = file_url(page);
    let mut cmd = Command::new("chromium");
    for (var, sub) in [
        ("HOME", "home"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_RUNTIME_DIR", "runtime"),
    ] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).expect("a folder for chromium");
        cmd.env(var, path);
    }
    cmd.arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--metrics-recording-only",
            "--hide-scrollbars",
        ])
        .args(args)
        .arg(&url);
    let out = match output_within(&mut cmd, LIMIT) {
        Ok(out) => out,
        Err(out) => panic!(
            "chromium did not finish with {url} within {LIMIT:?}; it printed:\n{}",
            text(&out.stderr)
        ),
    };
    assert!(
        out.status.success(),
        "chromium failed ({}) with {url}:\n{}",
        out.status,
        text(&out.stderr)
    );
    out
}

/// The DOM of `page` (a file) once Chromium has loaded it, serialized as
/// HTML (as `document.documentElement.outerHTML`): what the browser made
/// of the page, not its bytes. Fails the test, with Chromium's standard
/// error, if Chromium is missing, fails or takes longer than [`LIMIT`].
pub fn dump_dom(page: &Path) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(dir.path(), page, &["--dump-dom".to_owned()]);
    let dom = text(&out.stdout);
    assert!(
        dom.contains("<html"),
        "chromium printed no DOM for {}:\n{}",
        page.display(),
        text(&out.stderr)
    );
    dom
}

/// A picture of `page` (a file) in a `width` × `height` window, at one
/// device pixel per CSS pixel: PNG bytes ([`Picture::decode`] reads them).
/// Fails the test as [`dump_dom`] does.
pub fn screenshot(page: &Path, width: u32, height: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("screenshot.png");
    let out = run(
        dir.path(),
        page,
        &[
            format!("--screenshot={}", file.display()),
            format!("--window-size={width},{height}"),
            "--force-device-scale-factor=1".to_owned(),
        ],
    );
    std::fs::read(&file).unwrap_or_else(|e| {
        panic!(
            "chromium wrote no screenshot of {} ({e}):\n{}",
            page.display(),
            text(&out.stderr)
        )
    })
}

/// A decoded picture: 8-bit RGBA pixels, row after row.
#[derive(Debug, Clone)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    rgba: Vec<u8>,
}

impl Picture {
    /// Decodes PNG bytes (any colour type and depth); fails the test if
    /// they are not a PNG.
    pub fn decode(bytes: &[u8]) -> Picture {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().expect("a PNG picture");
        let mut buf = vec![0; reader.output_buffer_size().expect("a PNG of a sane size")];
        let info = reader.next_frame(&mut buf).expect("a PNG's pixels");
        let (width, height) = (info.width, info.height);
        let mut rgba = Vec::with_capacity(width as usize * height as usize * 4);
        for row in buf.chunks(info.line_size).take(height as usize) {
            let row = &row[..width as usize * info.color_type.samples()];
            match info.color_type {
                png::ColorType::Rgba => rgba.extend_from_slice(row),
                png::ColorType::Rgb => {
                    for p in row.chunks(3) {
                        rgba.extend_from_slice(&[p[0], p[1], p[2], 255]);
                    }
                }
                png::ColorType::GrayscaleAlpha => {
                    for p in row.chunks(2) {
                        rgba.extend_from_slice(&[p[0], p[0], p[0], p[1]]);
                    }
                }
                png::ColorType::Grayscale => {
                    for &g in row {
                        rgba.extend_from_slice(&[g, g, g, 255]);
                    }
                }
                png::ColorType::Indexed => unreachable!("normalize_to_color8 expands palettes"),
            }
        }
        Picture {
            width,
            height,
            rgba,
        }
    }

    /// The pixel at (`x`, `y`) as RGBA.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 4] {
        assert!(x < self.width && y < self.height, "({x}, {y}) is outside");
        let i = (y as usize * self.width as usize + x as usize) * 4;
        [
            self.rgba[i],
            self.rgba[i + 1],
            self.rgba[i + 2],
            self.rgba[i + 3],
        ]
    }

    /// Every pixel whose colour is `rgb` give or take `tolerance` per
    /// channel, as (x, y).
    pub fn find(&self, rgb: [u8; 3], tolerance: u8) -> Vec<(u32, u32)> {
        let mut found = Vec::new();
        for (i, p) in self.rgba.chunks(4).enumerate() {
            if (0..3).all(|c| p[c].abs_diff(rgb[c]) <= tolerance) {
                let i = i as u32;
                found.push((i % self.width, i / self.width));
            }
        }
        found
    }

    /// How many distinct colours the picture has: 1 for a blank one.
    pub fn colours(&self) -> usize {
        let mut seen: Vec<[u8; 4]> = self
            .rgba
            .chunks(4)
            .map(|p| [p[0], p[1], p[2], p[3]])
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }
}

/// `#rrggbb` as RGB; fails the test on anything else.
pub fn hex_colour(hex: &str) -> [u8; 3] {
    let digits = hex.strip_prefix('#').unwrap_or(hex);
    assert!(
        digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a #rrggbb colour: {hex}"
    );
    let byte = |i: usize| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digits");
    [byte(0), byte(2), byte(4)]
}

/// Checks a `testbed ci` HTML report as Chromium renders it:
///
/// - the index (`index`) lists exactly the entries of `expected`, each
///   `(name, status)` (`passed`, `failed`, `error` or `cached`) in a row
///   with `data-status="STATUS"`, a link named after the entry and a
///   status badge saying STATUS;
/// - each entry's page (followed from that link) names the entry, and,
///   unless its status is `error` (no plan, so no picture), has its
///   topology inlined in `<figure id="topology">`: an `<svg>` in which
///   every node of the page's node list appears by name.
///
/// Fails the test, with the DOM, on the first difference.
pub fn check_report(index: &Path, expected: &[(&str, &str)]) {
    let dom = dump_dom(index);
    let rows = entry_rows(&dom);
    assert_eq!(
        rows.len(),
        expected.len(),
        "the index lists {} entries, expected {expected:?}:\n{dom}",
        rows.len()
    );
    for (name, status) in expected {
        let shown = dom_text(name);
        let row = rows
            .iter()
            .find(|row| {
                anchors(row)
                    .iter()
                    .any(|(_, text)| text.as_str() == shown.as_str())
            })
            .unwrap_or_else(|| panic!("no row links to {name:?} in the index:\n{dom}"));
        assert!(
            row.contains(&format!("data-status=\"{status}\"")),
            "{name:?} is not marked {status} in the index: {row}"
        );
        assert!(
            row.contains(&format!("<span class=\"status {status}\">{status}</span>")),
            "{name:?} has no {status} badge in the index: {row}"
        );
        let (href, _) = anchors(row)
            .into_iter()
            .find(|(_, text)| *text == shown)
            .expect("the entry's link");
        let page = index
            .parent()
            .unwrap_or(Path::new("."))
            .join(percent_decode(&href));
        assert!(
            page.is_file(),
            "{name:?} links to {href}, which is not a file ({})",
            page.display()
        );
        check_entry_page(&page, name, status);
    }
}

/// The assertions of [`check_report`] on one entry's page.
fn check_entry_page(page: &Path, name: &str, status: &str) {
    let dom = dump_dom(page);
    assert!(
        dom.contains(&dom_text(name)),
        "the page of {name:?} does not name it:\n{dom}"
    );
    assert!(
        dom.contains(&format!("<span class=\"status {status}\">{status}</span>")),
        "the page of {name:?} has no {status} badge:\n{dom}"
    );
    if status == "error" {
        return;
    }
    let figure = between(&dom, "<figure id=\"topology\">", "</figure>")
        .unwrap_or_else(|| panic!("the page of {name:?} has no topology figure:\n{dom}"));
    assert!(
        figure.contains("<svg"),
        "the topology of {name:?} is no inlined <svg>:\n{figure}"
    );
    let nodes = node_names(&dom);
    assert!(
        !nodes.is_empty(),
        "the page of {name:?} lists no node:\n{dom}"
    );
    for node in &nodes {
        assert!(
            figure.contains(&format!(">{node}<")),
            "node {node} of {name:?} is not in its topology picture:\n{figure}"
        );
    }
}

/// The `<tr …>…</tr>` of the index's entry rows (those with an
/// `id="entry-…"`).
fn entry_rows(dom: &str) -> Vec<String> {
    dom.split("<tr ")
        .skip(1)
        .filter(|row| row.starts_with("id=\"entry-"))
        .map(|row| row.split("</tr>").next().unwrap_or(row).to_owned())
        .collect()
}

/// Every `<a href="HREF">TEXT</a>` of a fragment, as (HREF, TEXT) with
/// HREF's character references undone and TEXT as serialized.
fn anchors(fragment: &str) -> Vec<(String, String)> {
    fragment
        .split("<a href=\"")
        .skip(1)
        .filter_map(|rest| {
            let (href, rest) = rest.split_once('"')?;
            let text = between(rest, ">", "</a>")?;
            Some((href.replace("&amp;", "&"), text.to_owned()))
        })
        .collect()
}

/// The node names of an entry page's node list: each item is
/// `name (role)`.
fn node_names(dom: &str) -> Vec<String> {
    between(dom, "<ul id=\"nodes\">", "</ul>")
        .unwrap_or_default()
        .split("<li>")
        .skip(1)
        .filter_map(|item| item.split("</li>").next())
        .map(|item| {
            item.rsplit_once(" (")
                .map(|(name, _)| name)
                .unwrap_or(item)
                .trim()
                .to_owned()
        })
        .collect()
}

/// What lies between the first `start` and the next `end` after it.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// Text as Chromium serializes it in a DOM: `&`, `<`, `>` and no-break
/// spaces escaped, nothing else.
fn dom_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

/// A URL path with its `%XX` escapes undone.
fn percent_decode(path: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// `file://` URL of a file, its path made absolute and percent-encoded.
pub fn file_url(page: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let path = page
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", page.display()));
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                url.push(b as char)
            }
            _ => url.push_str(&format!("%{b:02X}")),
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_escapes_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let page = dir.path().join("a b#c%.html");
        std::fs::write(&page, "<p>x</p>").expect("page");
        let url = file_url(&page);
        assert!(url.starts_with("file:///"), "{url}");
        assert!(url.ends_with("/a%20b%23c%25.html"), "{url}");
        assert_eq!(
            percent_decode(url.trim_start_matches("file://")),
            page.canonicalize().expect("canonical")
        );
        assert_eq!(dom_text("a<b> & c"), "a&lt;b&gt; &amp; c");
        assert_eq!(hex_colour("#dbeafe"), [0xdb, 0xea, 0xfe]);
    }

    #[test]
    fn rows_links_and_nodes_are_read_from_a_dom() {
        let dom = "<table><tr><th>name</th></tr><tr id=\"entry-a--b\" data-status=\"passed\"><td><a href=\"a--b/index.html\">a/b &amp; c</a></td></tr>\n<tr id=\"entry-x\"><td></td></tr></table><ul id=\"nodes\">\n<li>server (server)</li>\n<li>client1 (client)</li>\n</ul>";
        let rows = entry_rows(dom);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            anchors(&rows[0]),
            [("a--b/index.html".to_owned(), dom_text("a/b & c"))]
        );
        assert_eq!(node_names(dom), ["server", "client1"]);
    }

    #[test]
    fn pictures_decode_to_rgba() {
        let mut bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut bytes, 2, 1);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().expect("header");
            writer
                .write_image_data(&[0xdb, 0xea, 0xfe, 255, 255, 255])
                .expect("pixels");
        }
        let picture = Picture::decode(&bytes);
        assert_eq!((picture.width, picture.height), (2, 1));
        assert_eq!(picture.pixel(0, 0), [0xdb, 0xea, 0xfe, 255]);
        assert_eq!(picture.find([0xdc, 0xea, 0xfe], 1), [(0, 0)]);
        assert_eq!(picture.colours(), 2);
    }
}
