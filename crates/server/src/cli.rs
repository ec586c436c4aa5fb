//! The `portcullis` command line. Exit status: 0 done, 2 usage or configuration error, 1 runtime
//! failure, each failure with one line on stderr that says what to do.

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use portcullis_core::clock::Millis;
use portcullis_core::email::Email;
use portcullis_store::SigningKeyStore;
use secrecy::{ExposeSecret, SecretString};

use crate::app::{StartError, bootstrap};
use crate::config::{Config, ConfigError};
use crate::error::Error;
use crate::signing_keys::KeyRing;
use crate::signing_keys::handlers::SigningKeyView;
use crate::telemetry;
use crate::users::insert_user;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Authentication for APIs, in one binary."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        store: StoreFlags,
        /// Address to listen on (default 127.0.0.1:8787).
        #[arg(long)]
        listen: Option<String>,
        /// Redis URL, for several nodes.
        #[arg(long)]
        redis_url: Option<String>,
        /// Public base URL, the `iss` of tokens (default http://<listen>).
        #[arg(long)]
        issuer: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        store: StoreFlags,
    },
    /// Administrative commands.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage JWT signing keys.
    SigningKeys {
        #[command(subcommand)]
        command: SigningKeysCommand,
    },
    /// Manage OAuth clients.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
}

#[derive(Subcommand)]
pub enum ClientsCommand {
    /// Register a client; prints it as JSON (with its secret, shown only this once).
    Create {
        #[command(flatten)]
        store: StoreFlags,
        #[arg(long)]
        name: String,
        /// `confidential` or `public`.
        #[arg(long = "type", default_value = "confidential")]
        client_type: String,
        /// A redirect URI (repeat for several).
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// A grant type (repeat; default authorization_code and refresh_token).
        #[arg(long = "grant-type")]
        grant_types: Vec<String>,
        /// A scope the client may ask for (repeat).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// client_secret_basic (default for confidential), client_secret_post or none (public).
        #[arg(long)]
        auth_method: Option<String>,
        /// An audience of its access tokens (repeat).
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Where RP-initiated logout may send the browser (repeat).
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
        /// `jwt` (default) or `opaque` access tokens.
        #[arg(long)]
        token_format: Option<String>,
        /// A first-party client: no consent page.
        #[arg(long)]
        skip_consent: bool,
    },
    /// List clients, one JSON object per line.
    List {
        #[command(flatten)]
        store: StoreFlags,
    },
    /// Delete a client: its refresh tokens stop working, its codes and consents go.
    Delete {
        #[command(flatten)]
        store: StoreFlags,
        client_id: String,
    },
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Root API keys (scope `admin`).
    RootKey {
        #[command(subcommand)]
        command: RootKeyCommand,
    },
}

#[derive(Subcommand)]
pub enum RootKeyCommand {
    /// Print a new root API key, alone on stdout.
    Create {
        #[command(flatten)]
        store: StoreFlags,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from stdin.
    Create {
        #[command(flatten)]
        store: StoreFlags,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: Option<String>,
        /// Give the user the `admin` role.
        #[arg(long)]
        admin: bool,
    },
}

#[derive(Subcommand)]
pub enum SigningKeysCommand {
    /// Create the next signing key (published now, signing after the publish lead time).
    Rotate {
        #[command(flatten)]
        store: StoreFlags,
    },
    /// List signing keys and their state.
    List {
        #[command(flatten)]
        store: StoreFlags,
    },
    /// End a signing key now (it may be compromised): it leaves the JWKS and every token it signed
    /// stops working, on every running node within a second. A new key takes over if it was signing.
    Revoke {
        #[command(flatten)]
        store: StoreFlags,
        /// The key's id (`kid`), as `signing-keys list` shows it. Base64url, so it may begin with `-`.
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

#[derive(Args, Clone)]
pub struct StoreFlags {
    /// Folder for the SQLite file and master key (default ./portcullis-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// postgres://… selects PostgreSQL.
    #[arg(long)]
    database_url: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
}

pub enum Failure {
    Usage(String),
    Runtime(String),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Usage(format!("configuration error: {e}"))
    }
}

impl From<StartError> for Failure {
    fn from(e: StartError) -> Self {
        Failure::Runtime(e.to_string())
    }
}

fn load(store: &StoreFlags, extra: &[(&str, Option<String>)]) -> Result<Config, Failure> {
    let mut flags = figment::value::Dict::new();
    if let Some(d) = &store.data_dir {
        flags.insert("data_dir".into(), d.display().to_string().into());
    }
    if let Some(u) = &store.database_url {
        flags.insert("database_url".into(), u.clone().into());
    }
    for (name, value) in extra {
        if let Some(v) = value {
            flags.insert((*name).into(), v.clone().into());
        }
    }
    Ok(Config::load(store.config.as_deref(), &flags)?)
}

/// Runs one command.
pub async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve {
            store,
            listen,
            redis_url,
            issuer,
        } => {
            let config = load(
                &store,
                &[
                    ("listen", listen),
                    ("redis_url", redis_url),
                    ("issuer", issuer),
                ],
            )?;
            serve(config).await
        }
        Command::Migrate { store } => {
            let config = load(&store, &[])?;
            let store = bootstrap::open_store(&config).await?;
            eprintln!("migrations applied ({})", store.backend_name());
            store.close().await;
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::RootKey {
                    command: RootKeyCommand::Create { store },
                },
        } => {
            let config = load(&store, &[])?;
            let store = bootstrap::open_store(&config).await?;
            let key = crate::app::create_root_key(&store, "root (cli)").await?;
            println!("{key}");
            store.close().await;
            Ok(())
        }
        Command::User {
            command:
                UserCommand::Create {
                    store,
                    email,
                    name,
                    admin,
                },
        } => {
            let config = load(&store, &[])?;
            let email =
                Email::parse(&email).map_err(|e| Failure::Usage(format!("--email: {e}")))?;
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .map_err(|e| Failure::Runtime(format!("reading the password from stdin: {e}")))?;
            let password = SecretString::from(password.trim_end_matches(['\r', '\n']).to_owned());
            config
                .password_policy()
                .check(password.expose_secret(), &email)
                .map_err(|reasons| {
                    Failure::Usage(format!(
                        "the password is too weak: {}",
                        reasons
                            .iter()
                            .map(|r| r.message())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))
                })?;
            let store = bootstrap::open_store(&config).await?;
            let hashing = portcullis_core::passwords::PasswordHashing::new(config.argon2())
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            let hash = hashing
                .hash(&password)
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            let roles = if admin { "admin" } else { "" };
            match insert_user(
                &store,
                &email,
                name,
                Some(hash.as_str().to_owned()),
                roles,
                Some(Millis::now()),
            )
            .await
            {
                Ok(user) => println!("{}", user.id),
                Err(Error::EmailTaken) => {
                    return Err(Failure::Runtime(format!(
                        "a user with email {email} already exists"
                    )));
                }
                Err(Error::Internal(cause)) => return Err(Failure::Runtime(cause)),
                Err(e) => return Err(Failure::Runtime(e.to_string())),
            }
            store.close().await;
            Ok(())
        }
        Command::Clients { command } => clients(command).await,
        Command::SigningKeys { command } => {
            let (store_flags, action) = match command {
                SigningKeysCommand::Rotate { store } => (store, KeyAction::Rotate),
                SigningKeysCommand::List { store } => (store, KeyAction::List),
                SigningKeysCommand::Revoke { store, kid } => (store, KeyAction::Revoke(kid)),
            };
            let config = load(&store_flags, &[])?;
            let store = bootstrap::open_store(&config).await?;
            let now = Millis::now();
            let ring = || async {
                let master = bootstrap::load_master_key(&config)?;
                KeyRing::from_config(store.clone(), master, &config)
                    .await
                    .map_err(|e| Failure::Runtime(e.to_string()))
            };
            let show = |row: &portcullis_store::SigningKeyRow| {
                println!(
                    "{}",
                    serde_json::to_string(&SigningKeyView::from_row(row, Millis::now()))
                        .unwrap_or_default()
                );
            };
            match action {
                KeyAction::Rotate => {
                    let row = ring()
                        .await?
                        .create_key(now, config.signing_key_publish_lead_s)
                        .await
                        .map_err(|e| Failure::Runtime(e.to_string()))?;
                    show(&row);
                }
                KeyAction::List => {
                    for row in store
                        .all_signing_keys()
                        .await
                        .map_err(|e| Failure::Runtime(e.to_string()))?
                    {
                        show(&row);
                    }
                }
                KeyAction::Revoke(kid) => {
                    let (found, replacement) = ring()
                        .await?
                        .revoke(&kid)
                        .await
                        .map_err(|e| Failure::Runtime(e.to_string()))?;
                    if !found {
                        return Err(Failure::Runtime(format!(
                            "no live signing key {kid} (see `portcullis signing-keys list`)"
                        )));
                    }
                    eprintln!("signing key {kid} revoked; running nodes drop it within a second");
                    if let Some(row) = replacement {
                        show(&row);
                    }
                }
            }
            store.close().await;
            Ok(())
        }
    }
}

async fn clients(command: ClientsCommand) -> Result<(), Failure> {
    use crate::oauth::{ClientSettings, Clients};
    let flags = match &command {
        ClientsCommand::Create { store, .. }
        | ClientsCommand::List { store }
        | ClientsCommand::Delete { store, .. } => store.clone(),
    };
    let config = load(&flags, &[])?;
    let store = bootstrap::open_store(&config).await?;
    let (audit, audit_task) = crate::audit::Audit::spawn(store.clone());
    let clients = Clients::new(
        store.clone(),
        audit.clone(),
        bootstrap::client_rules(&config, crate::signing_keys::ring_algs(config.jwt_alg)),
        None,
    );
    let ctx = crate::audit::AuditContext::default();
    let fail = |e: Error| match e {
        Error::Validation(errors) => Failure::Usage(
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Error::NotFound(_) => {
            Failure::Runtime("no such client (see `portcullis clients list`)".into())
        }
        other => Failure::Runtime(other.to_string()),
    };
    let show = |c: &crate::oauth::Client, secret: Option<&SecretString>| {
        let mut v = serde_json::to_value(&c.settings).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("client_id".into(), c.id.to_string().into());
            if let Some(s) = secret {
                obj.insert("client_secret".into(), s.expose_secret().into());
            }
        }
        println!("{v}");
    };
    let result = match command {
        ClientsCommand::Create {
            name,
            client_type,
            redirect_uris,
            grant_types,
            scopes,
            auth_method,
            audiences,
            post_logout_redirect_uris,
            token_format,
            skip_consent,
            ..
        } => {
            let settings = ClientSettings {
                name,
                client_type,
                redirect_uris,
                grant_types,
                scopes,
                token_endpoint_auth_method: auth_method,
                access_token_format: token_format,
                audiences,
                post_logout_redirect_uris,
                skip_consent,
                ..ClientSettings::default()
            };
            clients
                .create("cli", &settings, &ctx)
                .await
                .map(|(c, secret)| show(&c, secret.as_ref()))
                .map_err(fail)
        }
        ClientsCommand::List { .. } => {
            let mut after = None;
            loop {
                let page = clients.list(after.as_ref(), 500).await.map_err(fail)?;
                for c in &page {
                    show(c, None);
                }
                match page.last() {
                    Some(last) if page.len() == 500 => after = Some(last.id.clone()),
                    _ => break,
                }
            }
            Ok(())
        }
        ClientsCommand::Delete { client_id, .. } => {
            clients
                .delete("cli", &client_id, &ctx)
                .await
                .map_err(fail)?;
            eprintln!("client {client_id} deleted");
            Ok(())
        }
    };
    drop(clients);
    drop(audit);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), audit_task).await;
    store.close().await;
    result
}

enum KeyAction {
    Rotate,
    List,
    Revoke(String),
}

async fn serve(config: Config) -> Result<(), Failure> {
    telemetry::init_logging(config.log_format);
    let store = bootstrap::open_store(&config).await?;
    let first_start = crate::app::store_is_empty(&store).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            Failure::Runtime(format!(
                "cannot listen on {}: {e} (choose another with --listen)",
                config.listen
            ))
        })?;
    // With port 0 the system picks one: the issuer (when derived from the address) must name it.
    let mut config = config;
    if let Ok(bound) = listener.local_addr() {
        config.listen = bound;
    }
    let issuer = config.issuer();
    let data_dir = config.data_dir.clone();
    tracing::info!(listen = %config.listen, issuer = %issuer, store = store.backend_name(), config = ?config, "starting");
    let mut running = crate::app::start(config, store.clone(), listener).await?;
    if first_start {
        let key = crate::app::create_root_key(&store, "root (first start)").await?;
        hand_over_root_key(&data_dir, &key)?;
    }
    eprintln!(
        "portcullis is listening on http://{} (issuer {issuer})",
        running.addr
    );
    let result = tokio::select! {
        r = running.wait() => r.map_err(|e| Failure::Runtime(format!("server stopped: {e}"))),
        _ = shutdown_signal() => Ok(()),
    };
    tracing::info!("shutting down");
    running.stop().await;
    result
}

/// The first start's root key goes into a file only its owner can read, never into a log: stderr is
/// usually captured by a supervisor (systemd, Docker, Kubernetes) and kept where many can read it.
/// When stderr is a terminal (a person is watching), the key is printed there too.
fn hand_over_root_key(data_dir: &std::path::Path, key: &str) -> Result<(), Failure> {
    use std::io::IsTerminal;
    bootstrap::ensure_private_dir(data_dir)?;
    let path = data_dir.join("root-key.txt");
    let _ = std::fs::remove_file(&path);
    bootstrap::write_private_file(&path, format!("{key}\n").as_bytes()).map_err(|e| {
        Failure::Runtime(format!(
            "cannot write the first root API key to {}: {e}",
            path.display()
        ))
    })?;
    let shown = std::fs::canonicalize(&path).unwrap_or(path);
    eprintln!(
        "root API key (scope admin) written to {} (mode 0600): store it somewhere safe, then delete the file",
        shown.display()
    );
    if std::io::stderr().is_terminal() {
        eprintln!("root API key (shown once): {key}");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
