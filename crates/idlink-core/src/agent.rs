//! What a user agent says about the device behind it.
//!
//! Only one thing is read from it: the phone platform. A person carries
//! one phone, and phones of one household are often of different makes,
//! so an unsigned iPhone seen beside an account's signed-in Android phone
//! (or the other way round) is a housemate's, not the account owner's
//! second id ([`crate::engine`], "platform clash"). A phone's own browser
//! and its app share the platform, so that pair is never told apart.

use memchr::memmem::Finder;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

/// A device's phone platform, as its user agent names it.
///
/// `Unknown` for everything that is not recognisably a phone: computers,
/// iPads, bots, and events with no user agent. Android tablets count as
/// Android: an app's user agent seldom says which of the two it runs on.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Platform {
    /// Not a phone, or not said.
    #[default]
    Unknown,
    /// An iPhone: `iPhone` in the user agent.
    Ios,
    /// An Android device: `Android` in the user agent.
    Android,
}

impl Platform {
    /// The platform a `User-Agent` string names. Browsers write the token
    /// in their comment (`Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 …`,
    /// `(Linux; Android 14; Pixel 8)`), apps wherever they like
    /// (`News/5.12 (iPhone15,2; iOS 17.4.1)`, `Dalvik/2.1.0 (Linux; U;
    /// Android 14 …`): the whole string is searched. A string naming both
    /// says nothing.
    pub fn of_user_agent(ua: &str) -> Platform {
        // Searchers built once: building one per call cost 95 ns a user
        // agent against 21 (two searches over a typical one).
        static IPHONE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"iPhone"));
        static ANDROID: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"Android"));
        let ua = ua.as_bytes();
        let ios = IPHONE.find(ua).is_some();
        let android = ANDROID.find(ua).is_some();
        match (ios, android) {
            (true, false) => Platform::Ios,
            (false, true) => Platform::Android,
            _ => Platform::Unknown,
        }
    }

    /// Whether a device of this platform is a phone that none of an
    /// account's phones can be: the account was seen on phones (`phones`,
    /// a mask of [`Platform::bits`]), all of the other platform. An
    /// account seen on both clashes with neither.
    pub fn clashes_with(self, phones: u32) -> bool {
        let mine = self.bits();
        mine != 0 && phones != 0 && phones & mine == 0
    }

    /// The platform as a two-bit mask, for packed state: iPhone 1,
    /// Android 2, unknown 0.
    pub(crate) fn bits(self) -> u32 {
        self as u32
    }

    /// The platform a two-bit mask names: both bits (a device seen as
    /// both) name none.
    pub(crate) fn from_bits(bits: u32) -> Platform {
        match bits & 3 {
            1 => Platform::Ios,
            2 => Platform::Android,
            _ => Platform::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_told_by_platform_and_nothing_else_is_a_phone() {
        let cases = [
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15",
                Platform::Ios,
            ),
            ("IdlinkNews/5.12.0 (iPhone15,2; iOS 17.4.1)", Platform::Ios),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Mobile Safari/537.36",
                Platform::Android,
            ),
            (
                "Dalvik/2.1.0 (Linux; U; Android 14; SM-A546B Build/UP1A)",
                Platform::Android,
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15",
                Platform::Unknown,
            ),
            (
                "IdlinkNews/5.12.0 (iPad13,18; iPadOS 17.4)",
                Platform::Unknown,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0",
                Platform::Unknown,
            ),
            ("python-requests/2.31.0", Platform::Unknown),
            ("spoofed iPhone Android", Platform::Unknown),
            ("", Platform::Unknown),
        ];
        for (ua, want) in cases {
            assert_eq!(Platform::of_user_agent(ua), want, "{ua}");
        }
    }

    #[test]
    fn only_two_phones_of_different_platforms_clash() {
        use Platform::*;
        assert!(Ios.clashes_with(Android.bits()) && Android.clashes_with(Ios.bits()));
        for p in [Unknown, Ios, Android] {
            assert!(!p.clashes_with(p.bits()));
            assert!(!p.clashes_with(Unknown.bits()) && !Unknown.clashes_with(p.bits()));
            assert!(!p.clashes_with(Ios.bits() | Android.bits()));
            assert_eq!(Platform::from_bits(p.bits()), p);
        }
        assert_eq!(Platform::from_bits(3), Unknown);
    }
}
