//! The engine's copy of each published media part (the container a buyer downloads and
//! the free preview clip), one file per part under `<data-dir>/media/`. Nodes fetch parts
//! from here with `DeliveryService.FetchMedia` and cache them. Files are written to a
//! temporary name, synced and renamed, so a crash never leaves half a container; a part is
//! written before its `MediaPublished` event is appended, so every published media has
//! its bytes (`app::Market::publish` does both, and removes the bytes again when the
//! publication is refused). With several engine replicas on one JetStream stream the
//! parts belong in a shared store such as a JetStream object store (ARCHITECTURE.md).

use std::path::{Path, PathBuf};

/// Why the media store could not do what was asked. Paths name the engine's own files;
/// the edge never sends this text to a caller without its own words around it.
#[derive(Debug, thiserror::Error)]
pub enum MediaStoreError {
    #[error("invalid media id")]
    InvalidId,
    #[error("cannot create the media directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the media store's task failed")]
    Task(#[source] tokio::task::JoinError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Container,
    PreviewClip,
}

impl Part {
    fn extension(self) -> &'static str {
        match self {
            Part::Container => "vsmc",
            Part::PreviewClip => "clip",
        }
    }
}

#[derive(Clone, Debug)]
pub struct MediaStore {
    dir: PathBuf,
}

impl MediaStore {
    pub fn open(dir: &Path) -> Result<Self, MediaStoreError> {
        std::fs::create_dir_all(dir).map_err(|source| MediaStoreError::CreateDir { path: dir.to_path_buf(), source })?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    fn path(&self, media_id: &str, part: Part) -> Result<PathBuf, MediaStoreError> {
        // Ids are checked tokens ([A-Za-z0-9_-]), so they cannot leave the directory.
        if !crate::ids::is_valid_token(media_id) {
            return Err(MediaStoreError::InvalidId);
        }
        Ok(self.dir.join(format!("{media_id}.{}", part.extension())))
    }

    pub async fn put(&self, media_id: &str, part: Part, bytes: bytes::Bytes) -> Result<(), MediaStoreError> {
        let path = self.path(media_id, part)?;
        tokio::task::spawn_blocking(move || {
            let temporary = path.with_extension("tmp");
            let write = |source| MediaStoreError::Write { path: path.clone(), source };
            {
                use std::io::Write;
                let mut file = std::fs::File::create(&temporary).map_err(write)?;
                file.write_all(&bytes).map_err(write)?;
                file.sync_all().map_err(write)?;
            }
            std::fs::rename(&temporary, &path).map_err(write)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(write)?;
            }
            Ok(())
        })
        .await
        .map_err(MediaStoreError::Task)?
    }

    /// Removes every part of a media whose publication was refused (best effort: a file
    /// left behind is referred to by no event).
    pub async fn remove(&self, media_id: &str) {
        for part in [Part::Container, Part::PreviewClip] {
            if let Ok(path) = self.path(media_id, part)
                && let Err(error) = tokio::fs::remove_file(&path).await
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), %error, "cannot remove the bytes of a refused publication");
            }
        }
    }

    /// The part's bytes, or `None` when this engine holds no such part.
    pub async fn get(&self, media_id: &str, part: Part) -> Result<Option<bytes::Bytes>, MediaStoreError> {
        let path = self.path(media_id, part)?;
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes::Bytes::from(bytes))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(MediaStoreError::Read { path, source }),
        })
        .await
        .map_err(MediaStoreError::Task)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_then_get_and_bad_ids_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = MediaStore::open(dir.path()).expect("opens");
        store.put("md1", Part::Container, bytes::Bytes::from_static(b"abc")).await.expect("put");
        assert_eq!(store.get("md1", Part::Container).await.expect("get").as_deref(), Some(&b"abc"[..]));
        assert_eq!(store.get("md1", Part::PreviewClip).await.expect("get"), None);
        assert!(store.get("../etc/passwd", Part::Container).await.is_err());
    }
}
