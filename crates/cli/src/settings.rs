//! Settings for `pubsub serve`, layered: defaults, then a TOML file
//! (`--config`, or `pubsub.toml` if present), then `PUBSUB_*` environment
//! variables (`__` separates levels: `PUBSUB_SERVER__MAX_MESSAGE_BYTES`),
//! then command-line flags.

use std::net::IpAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use pubsub_server::ServerConfig;
use serde::{Deserialize, Serialize};

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Trust `?userId=` (anyone can claim any user id). Development only.
    Dev,
}

/// What answers `sendToServer` when PubSub runs as a standalone binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinHandler {
    /// No handler: `sendToServer` answers `no_handler` (2000).
    #[default]
    None,
    /// Replies with the action it received (for trying things out and benchmarks).
    Echo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub bind: IpAddr,
    pub port: u16,
    /// Must be chosen explicitly; there is no silent default.
    pub auth: Option<AuthMode>,
    pub handler: BuiltinHandler,
    /// Node id used in client ids; random when absent.
    pub node_id: Option<String>,
    /// `tracing` filter, e.g. `info` or `pubsub_server=debug`.
    pub log: String,
    /// Worker threads, each with its own listener and single-threaded
    /// runtime; 0 means one per available core.
    pub workers: usize,
    /// Directories served over HTTP next to the WebSocket endpoint, as
    /// `"/prefix" = "directory"` (for the demo page and browser tests).
    #[serde(rename = "static")]
    pub static_dirs: std::collections::BTreeMap<String, std::path::PathBuf>,
    /// Whose presence a client may query and watch.
    pub presence_visibility: PresenceVisibility,
    pub topics: TopicRules,
    pub server: ServerConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceVisibility {
    /// Anyone may see anyone's presence.
    #[default]
    All,
    /// Users see only their own presence.
    #[serde(rename = "self")]
    OnlySelf,
}

/// Topic-name patterns (`*` = any run of characters, `{user}` = the client's
/// own user id) that clients may join and publish to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicRules {
    pub join: Vec<String>,
    pub publish: Vec<String>,
}

impl Default for TopicRules {
    fn default() -> Self {
        Self {
            join: vec!["*".into()],
            publish: vec!["*".into()],
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 4001,
            auth: None,
            handler: BuiltinHandler::None,
            node_id: None,
            log: "info".to_owned(),
            workers: 0,
            static_dirs: Default::default(),
            presence_visibility: PresenceVisibility::All,
            topics: TopicRules::default(),
            server: ServerConfig::default(),
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<BuiltinHandler>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[serde(rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_dirs: Option<std::collections::BTreeMap<String, std::path::PathBuf>>,
}

pub const DEFAULT_FILE: &str = "pubsub.toml";

pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, Box<figment::Error>> {
    let mut figment = Figment::from(Serialized::defaults(Settings::default()));
    figment = match file {
        Some(path) => figment.merge(Toml::file_exact(path)),
        None => figment.merge(Toml::file(DEFAULT_FILE)),
    };
    figment
        .merge(Env::prefixed("PUBSUB_").split("__"))
        .merge(Serialized::defaults(overrides))
        .extract()
        .map_err(Box::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature is fixed
    fn layers_apply_in_order() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "port = 5000\nauth = \"dev\"\n[server]\nmax_message_bytes = 1000"
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("PUBSUB_PORT", "6000");
            jail.set_env("PUBSUB_SERVER__HANDLER_TIMEOUT_MS", "1234");
            let s = load(Some(file.path()), &Overrides::default()).unwrap();
            assert_eq!(s.port, 6000, "environment beats the file");
            assert_eq!(s.auth, Some(AuthMode::Dev));
            assert_eq!(s.server.max_message_bytes, 1000);
            assert_eq!(s.server.handler_timeout_ms, 1234);
            assert_eq!(s.topics, TopicRules::default(), "open unless configured");
            let s = load(
                Some(file.path()),
                &Overrides {
                    port: Some(7000),
                    ..Overrides::default()
                },
            )
            .unwrap();
            assert_eq!(s.port, 7000, "flags beat the environment");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "[server]\nmax_mesage_bytes = 1000").unwrap();
        assert!(load(Some(file.path()), &Overrides::default()).is_err());
    }
}
