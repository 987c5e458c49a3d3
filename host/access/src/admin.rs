//! Who may use the admin endpoints (plugin management) when no API keys are
//! configured: a choice by network. With keys, the `admin` scope decides
//! instead, except that `Nobody` turns the endpoints off for every key too.
//!
//! One type for the command line (`--admin`, `KILN_ADMIN`), the config file
//! (`admin = "..."`) and the server, so the three cannot drift apart; the
//! names are the same everywhere: `loopback`, `anyone`, `none`.

use std::fmt;
use std::str::FromStr;

/// Which clients the admin endpoints answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminAccess {
    /// Clients connecting from a loopback address (the server's own machine).
    #[default]
    Loopback,
    /// Every client: only behind a trusted network or proxy.
    Anyone,
    /// No client: plugins change only through their files.
    // `none` in configuration, as it always was; `Nobody` in code, where
    // `None` would read as `Option::None`.
    #[serde(rename = "none")]
    Nobody,
}

impl AdminAccess {
    /// Every choice, in the order help texts list them.
    pub const ALL: [AdminAccess; 3] = [AdminAccess::Loopback, AdminAccess::Anyone, AdminAccess::Nobody];

    /// The name the command line and the config file use.
    pub fn name(self) -> &'static str {
        match self {
            AdminAccess::Loopback => "loopback",
            AdminAccess::Anyone => "anyone",
            AdminAccess::Nobody => "none",
        }
    }

    /// One line on what the choice means, for `--help`.
    pub fn help(self) -> &'static str {
        match self {
            AdminAccess::Loopback => "Clients on this machine only",
            AdminAccess::Anyone => "Every client (behind a trusted network only)",
            AdminAccess::Nobody => "Nobody: plugins change only through their files",
        }
    }
}

impl fmt::Display for AdminAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is none of `AdminAccess`'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown admin access {0:?}: expected loopback, anyone or none")]
pub struct UnknownAdminAccess(pub String);

impl FromStr for AdminAccess {
    type Err = UnknownAdminAccess;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AdminAccess::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| UnknownAdminAccess(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct File {
        admin: AdminAccess,
    }

    #[test]
    fn the_default_is_loopback() {
        assert_eq!(AdminAccess::default(), AdminAccess::Loopback);
    }

    #[test]
    fn every_name_parses_back_to_its_choice() {
        for access in AdminAccess::ALL {
            assert_eq!(access.to_string().parse::<AdminAccess>(), Ok(access));
        }
        assert_eq!("none".parse::<AdminAccess>(), Ok(AdminAccess::Nobody));
    }

    #[test]
    fn an_unknown_name_is_an_error_listing_the_accepted_ones() {
        let err = "nobody".parse::<AdminAccess>().unwrap_err().to_string();
        assert!(err.contains("\"nobody\""), "{err}");
        for name in ["loopback", "anyone", "none"] {
            assert!(err.contains(name), "{err}");
        }
        // Names are exact, as in the config file.
        assert!("Loopback".parse::<AdminAccess>().is_err());
    }

    #[test]
    fn the_config_file_uses_the_same_names_as_the_command_line() {
        for access in AdminAccess::ALL {
            let file: File = toml::from_str(&format!("admin = \"{access}\"")).unwrap();
            assert_eq!(file.admin, access);
        }
        let err = toml::from_str::<File>("admin = \"nobody\"").err().unwrap().to_string();
        assert!(err.contains("nobody") && err.contains("loopback"), "{err}");
    }
}
