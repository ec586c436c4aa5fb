//! Everything a node needs before it can serve: the data folder (kept private), the master key (never
//! readable by others), the store (opened and migrated).

use std::path::Path;

use portcullis_core::seal::MasterKey;
use portcullis_store::{Store, StoreOptions};

use super::StartError;
use crate::config::Config;

/// Opens the store named by the configuration (creating the data folder for SQLite) and migrates it.
pub async fn open_store(config: &Config) -> Result<Store, StartError> {
    let opts = StoreOptions {
        pool_size: config.db_pool_size,
        ..StoreOptions::default()
    };
    let store = match &config.database_url {
        Some(url) => Store::connect_postgres(url, &opts, None).await?,
        None => {
            ensure_private_dir(&config.data_dir)?;
            Store::open_sqlite(&config.sqlite_path(), &opts).await?
        }
    };
    store.migrate().await?;
    Ok(store)
}

/// Creates `dir` with mode 0700 if missing, and takes group and other access away from an existing
/// one (it holds the master key and, on SQLite, every hash and sealed key).
pub fn ensure_private_dir(dir: &Path) -> Result<(), StartError> {
    let err = |source| StartError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    if !dir.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
        #[cfg(not(unix))]
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
            tracing::warn!(path = %dir.display(), was = format!("{:o}", mode & 0o777), "the data folder was readable by others; its mode is now 0700");
        }
    }
    Ok(())
}

/// Refuses a key file that anyone but its owner may read: a key others have read is no secret.
#[cfg(unix)]
fn check_private_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| e.to_string())?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "it is readable by others (mode {:o}); if nobody else has read it, run `chmod 600 {}` \
             and start again, otherwise treat the key as compromised",
            mode & 0o777,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_file(_: &Path) -> Result<(), String> {
    Ok(())
}

/// The master key: from configuration, else `<data_dir>/master.key` (created with mode 0600, 32 random
/// bytes as hex).
pub fn load_master_key(config: &Config) -> Result<MasterKey, StartError> {
    if let Some(hexed) = &config.master_key {
        let raw = hex::decode(hexed.expose()).map_err(|e| StartError::MasterKey {
            path: "master_key".into(),
            reason: e.to_string(),
        })?;
        return MasterKey::from_bytes(raw).map_err(|e| StartError::MasterKey {
            path: "master_key".into(),
            reason: e.to_string(),
        });
    }
    ensure_private_dir(&config.data_dir)?;
    let path = config.data_dir.join("master.key");
    let shown = path.display().to_string();
    let bad = |reason: String| StartError::MasterKey {
        path: shown.clone(),
        reason,
    };
    if path.exists() {
        check_private_file(&path).map_err(bad)?;
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let raw = hex::decode(text.trim()).map_err(|_| bad("expected 64 hex digits".into()))?;
        return MasterKey::from_bytes(raw).map_err(|e| bad(e.to_string()));
    }
    let key = MasterKey::generate().map_err(|e| bad(e.to_string()))?;
    write_private_file(&path, hex::encode(key.expose_bytes()).as_bytes())
        .map_err(|e| bad(e.to_string()))?;
    Ok(key)
}

/// Writes `contents` to a new file only its owner may read (it must not exist yet).
#[cfg(unix)]
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(not(unix))]
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, contents)
}
