//! User-agent strings. Each simulated device keeps one user agent for the
//! whole scenario; the table index is stored on the device so events only
//! carry a byte.

use crate::rng::{SimRng, index};

/// Every user agent the simulator emits. Indexes into this table are what
/// devices store.
pub(crate) const USER_AGENTS: [&str; 16] = [
    // 0..=2: phone browsers
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Mobile Safari/537.36",
    // 3..=4: phone apps
    "IdlinkNews/5.12.0 (iPhone15,2; iOS 17.4.1)",
    "IdlinkNews/5.11.3 (Android 14; SM-A546B)",
    // 5..=8: desktop/laptop browsers
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    // 9..=10: tablets (browser, app)
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "IdlinkNews/5.12.0 (iPad13,18; iPadOS 17.4)",
    // 11..=15: bots (some honest, some disguised as browsers)
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
    "python-requests/2.31.0",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36",
    "Go-http-client/1.1",
];

/// User agent for a phone (`app` = native app install, else browser).
pub(crate) fn phone(rng: &mut SimRng, app: bool) -> u8 {
    if app {
        3 + index(rng, 2) as u8
    } else {
        index(rng, 3) as u8
    }
}

/// User agent for the browser of the phone whose app has user agent
/// `app`: the same platform (iOS or Android).
pub(crate) fn phone_browser(app: u8, rng: &mut SimRng) -> u8 {
    if text(app).contains("iOS") {
        0
    } else {
        1 + index(rng, 2) as u8
    }
}

/// User agent for a laptop or desktop browser.
pub(crate) fn computer(rng: &mut SimRng) -> u8 {
    5 + index(rng, 4) as u8
}

/// User agent for a tablet.
pub(crate) fn tablet(app: bool) -> u8 {
    if app { 10 } else { 9 }
}

/// User agent for a bot.
pub(crate) fn bot(rng: &mut SimRng) -> u8 {
    11 + index(rng, 5) as u8
}

/// Text of a stored user-agent index (falls back to the first entry so a
/// bad index can never produce junk output).
pub(crate) fn text(ua: u8) -> &'static str {
    USER_AGENTS
        .get(usize::from(ua))
        .copied()
        .unwrap_or(USER_AGENTS[0])
}
