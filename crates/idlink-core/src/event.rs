//! A validated input event.

use crate::agent::Platform;
use crate::ids::{AccountId, DeviceId};
use crate::time::Millis;
use std::net::IpAddr;

/// What an event is, reduced to what the engine acts on.
///
/// Activity kinds (`page_view`, `widget_view`, ...) all behave alike, so the
/// kind string is not kept: that keeps buffered events small.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum EventKind {
    /// Erase every trace of an account or a device.
    Erase,
    /// Stop inferring links for an account and delete its evidence.
    OptOut,
    /// Allow evidence for an account again, from the request's `ts` on.
    OptIn,
    /// A device signed in to an account.
    Login,
    /// A device signed out; the association stays.
    Logout,
    /// Any other sighting of a device.
    Activity,
}

impl EventKind {
    /// Order of application at equal `ts`: erase, opt_out, opt_in, then
    /// device events. The derive order above encodes it.
    pub fn priority(self) -> u8 {
        self as u8
    }

    /// Whether this is a privacy request rather than a device sighting.
    pub fn is_privacy(self) -> bool {
        matches!(
            self,
            EventKind::Erase | EventKind::OptOut | EventKind::OptIn
        )
    }

    /// The contract's name for the kind (activity kinds collapse).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Erase => "erase",
            EventKind::OptOut => "opt_out",
            EventKind::OptIn => "opt_in",
            EventKind::Login => "login",
            EventKind::Logout => "logout",
            EventKind::Activity => "activity",
        }
    }
}

/// Whom a privacy request is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PrivacyTarget {
    /// An account (opt_out, opt_in, erase).
    Account(AccountId),
    /// A device (erase only).
    Device(DeviceId),
}

/// One validated event of the input contract.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// Event time.
    pub ts: Millis,
    /// What happened.
    pub kind: EventKind,
    /// The device seen; `None` only for privacy requests about an account.
    pub device: Option<DeviceId>,
    /// The signed-in account, or the subject of an account privacy request.
    pub account: Option<AccountId>,
    /// Where the device was seen; `None` for privacy requests.
    pub ip: Option<IpAddr>,
    /// The phone platform its `user_agent` names: the one thing kept of
    /// the user agent, in one byte. Added in snapshot format 5.
    #[serde(deserialize_with = "crate::format::added_platform")]
    pub platform: Platform,
}

impl Event {
    /// Whether this event signs its device in to its account (a login, or
    /// any device event carrying both ids): it makes a sign-in link.
    pub fn is_sign_in(&self) -> bool {
        !self.kind.is_privacy() && self.device.is_some() && self.account.is_some()
    }

    /// The privacy request's subject, if this is one.
    pub fn privacy_target(&self) -> Option<PrivacyTarget> {
        if !self.kind.is_privacy() {
            return None;
        }
        match (&self.account, &self.device) {
            (Some(a), _) => Some(PrivacyTarget::Account(a.clone())),
            (None, Some(d)) => Some(PrivacyTarget::Device(d.clone())),
            (None, None) => None,
        }
    }
}
