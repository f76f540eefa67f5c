//! Loading the configuration file: the core's sections plus the CIDR
//! files they name. The service sections (`kafka`, `http`, `log`) are
//! split off here so the core keeps `deny_unknown_fields` for its own.

use anyhow::{Context, Result, bail};
use idlink_core::{AddressClassifier, Config};
use std::path::{Path, PathBuf};

/// Default config path, relative to the working directory.
pub const DEFAULT_CONFIG: &str = "config/default.toml";

/// A loaded configuration.
#[derive(Clone)]
pub struct Settings {
    /// The core's validated config.
    pub core: Config,
    /// Classifier built from the address settings and CIDR files.
    pub classifier: AddressClassifier,
    /// The service sections, parsed by `run`.
    pub service: toml::Table,
}

/// Service sections that the core does not know.
const SERVICE_SECTIONS: [&str; 4] = ["kafka", "service", "http", "log"];

impl Settings {
    /// Loads `path`, or the default config if it exists, or built-in
    /// defaults. `IDLINK_HASH_SECRET` overrides the hash secret.
    pub fn load(path: Option<&Path>) -> Result<Settings> {
        let chosen = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        };
        let (mut table, dir) = match &chosen {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                let table: toml::Table = text
                    .parse()
                    .with_context(|| format!("parsing config {}", p.display()))?;
                (table, p.parent().map(Path::to_path_buf).unwrap_or_default())
            }
            None => (toml::Table::new(), PathBuf::new()),
        };
        let mut service = toml::Table::new();
        for s in SERVICE_SECTIONS {
            if let Some(v) = table.remove(s) {
                service.insert(s.into(), v);
            }
        }
        let mut core: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{e}"))
            .with_context(|| {
                format!(
                    "config {}",
                    chosen
                        .as_deref()
                        .map_or("<defaults>".into(), |p| p.display().to_string())
                )
            })?;
        if let Ok(secret) = std::env::var("IDLINK_HASH_SECRET") {
            core.privacy.hash_secret = secret;
        }
        core.validate()?;
        let mut nets = Vec::new();
        for c in &core.addresses.exclude_cidrs {
            nets.push(c.parse()?);
        }
        for f in &core.addresses.exclude_cidr_files {
            let file = dir.join(f);
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) if chosen.is_none() && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("reading CIDR list {}", file.display()));
                }
            };
            match AddressClassifier::parse_cidr_list(&text) {
                Ok(list) => nets.extend(list),
                Err((line, bad)) => bail!("{}:{line}: {bad:?} is not a CIDR range", file.display()),
            }
        }
        let classifier = AddressClassifier::new(core.addresses.ipv6_prefix_len, &nets);
        Ok(Settings {
            core,
            classifier,
            service,
        })
    }
}
