//! Identifier newtypes, so a device id can never be passed where an account
//! id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A device or cookie identifier as it appears in the input contract.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub Box<str>);

/// An account identifier as it appears in the input contract.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub Box<str>);

macro_rules! id_impls {
    ($t:ident) => {
        impl $t {
            /// The id's text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                $t(s.into())
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
id_impls!(DeviceId);
id_impls!(AccountId);
