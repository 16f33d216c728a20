//! Backups of the MongoDB store in `mongodump`'s layout: per collection, `<name>.bson` (its
//! documents, one BSON document after another) and `<name>.metadata.json` (its indexes), all
//! read in one transaction of snapshot read concern, so as of one moment. `mongorestore`
//! reads the directory; `storaged restore` loads it into an empty database and upgrades its
//! schema.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter};
use std::path::Path;

use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{ReadConcern, TransactionOptions};

use super::schema::{Coll, SCHEMA, SCHEMA_ID};
use super::{MongoStore, failure};
use crate::meta::{SnapshotFacts, StoreError};

/// Documents inserted at once when loading.
const INSERT_BATCH: usize = 1000;

fn driver(error: mongodb::error::Error) -> StoreError {
    failure::store_error(&error)
}

fn file_error(path: &Path, error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{}: {error}", path.display()))
}

/// Every collection a dump holds: the store's, and the schema version's.
fn dumped() -> impl Iterator<Item = &'static str> {
    Coll::ALL.iter().map(|c| c.name()).chain([SCHEMA])
}

impl MongoStore {
    /// The database this store uses.
    pub fn database_name(&self) -> &str {
        &self.shared.database
    }

    /// Writes every collection into `dir` (which exists and is empty) as of one moment.
    pub async fn dump(&self, dir: &Path) -> Result<SnapshotFacts, StoreError> {
        let db = self.shared.client.database(&self.shared.database);
        let mut session = self.shared.client.start_session().await.map_err(driver)?;
        // Every read in one transaction of snapshot read concern sees one point in time. (A
        // snapshot session should too, but not every server pins its reads: SecantusDB does
        // not, and a dump read that way mixed collections from different moments.) Nothing
        // is written: the transaction is aborted at the end.
        let options = TransactionOptions::builder()
            .read_concern(ReadConcern::snapshot())
            .build();
        session
            .start_transaction()
            .with_options(options)
            .await
            .map_err(driver)?;
        let mut facts = SnapshotFacts::default();
        for name in dumped() {
            let path = dir.join(format!("{name}.bson"));
            let mut out = BufWriter::new(File::create(&path).map_err(|e| file_error(&path, e))?);
            let coll = db.collection::<Document>(name);
            let mut cursor = coll
                .find(doc! {})
                .sort(doc! { "_id": 1 })
                .session(&mut session)
                .await
                .map_err(driver)?;
            let mut count = 0u64;
            while let Some(document) = cursor.next(&mut session).await {
                let document = document.map_err(driver)?;
                learn(&mut facts, name, &document);
                document
                    .to_writer(&mut out)
                    .map_err(|e| file_error(&path, e))?;
                count += 1;
            }
            let file = out.into_inner().map_err(|e| file_error(&path, e.error()))?;
            file.sync_all().map_err(|e| file_error(&path, e))?;
            counted(&mut facts, name, count);
            self.dump_indexes(&db, name, dir).await?;
        }
        let _ = session.abort_transaction().await;
        if facts.vault.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "database {} holds no vault (no vault_id setting)",
                self.shared.database
            )));
        }
        Ok(facts)
    }

    /// `<name>.metadata.json`: the collection's indexes, as `mongorestore` reads them.
    async fn dump_indexes(
        &self,
        db: &mongodb::Database,
        name: &str,
        dir: &Path,
    ) -> Result<(), StoreError> {
        let reply = db
            .run_command(doc! { "listIndexes": name })
            .await
            .map_err(driver)?;
        let indexes = reply
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .cloned()
            .unwrap_or_default();
        let metadata = doc! { "options": {}, "indexes": indexes, "collectionName": name };
        let path = dir.join(format!("{name}.metadata.json"));
        let text = Bson::Document(metadata).into_relaxed_extjson().to_string();
        std::fs::write(&path, text).map_err(|e| file_error(&path, e))
    }

    /// Whether the database holds no document in any of the store's collections.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        for which in Coll::ALL {
            let coll = self.shared.collections.get(which);
            if coll.find_one(doc! {}).await.map_err(driver)?.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Inserts the documents of a dump in `dir` into this (empty) database, and records the
    /// dump's schema version, so that the next open upgrades what it must.
    pub async fn load(&self, dir: &Path, schema_version: u32) -> Result<u64, StoreError> {
        let mut loaded = 0;
        for which in Coll::ALL
            .into_iter()
            .filter(|c| c.since() <= schema_version)
        {
            let path = dir.join(format!("{}.bson", which.name()));
            let coll = self.shared.collections.get(which);
            let mut reader = BufReader::new(File::open(&path).map_err(|e| file_error(&path, e))?);
            let mut batch = Vec::with_capacity(INSERT_BATCH);
            while !reader
                .fill_buf()
                .map_err(|e| file_error(&path, e))?
                .is_empty()
            {
                let document = Document::from_reader(&mut reader)
                    .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
                batch.push(document);
                if batch.len() == INSERT_BATCH {
                    loaded += batch.len() as u64;
                    coll.insert_many(std::mem::take(&mut batch))
                        .await
                        .map_err(driver)?;
                }
            }
            if !batch.is_empty() {
                loaded += batch.len() as u64;
                coll.insert_many(batch).await.map_err(driver)?;
            }
        }
        let db = self.shared.client.database(&self.shared.database);
        db.collection::<Document>(SCHEMA)
            .update_one(
                doc! { "_id": SCHEMA_ID },
                doc! { "$set": { "version": i64::from(schema_version) } },
            )
            .upsert(true)
            .await
            .map_err(driver)?;
        Ok(loaded)
    }
}

/// Records how many documents `collection` holds, where the facts count them.
fn counted(facts: &mut SnapshotFacts, collection: &str, count: u64) {
    match collection {
        "inodes" => facts.inodes = count,
        "chunks" => facts.chunks = count,
        _ => {}
    }
}

/// What a dumped document tells of the vault: its ID and schema version.
fn learn(facts: &mut SnapshotFacts, collection: &str, document: &Document) {
    match collection {
        "settings" if document.get_str("_id") == Ok(crate::settings::VAULT_ID) => {
            if let Ok(value) = document.get_binary_generic("value") {
                facts.vault = value.clone();
            }
        }
        SCHEMA if document.get_str("_id") == Ok(SCHEMA_ID) => {
            if let Ok(version) = document.get_i64("version") {
                facts.schema_version = u32::try_from(version).unwrap_or(u32::MAX);
            }
        }
        _ => {}
    }
}

/// Reads the dump's files whole before anything is loaded: each collection's file is there and
/// holds whole BSON documents. What they tell of the vault.
pub fn check_dump(dir: &Path) -> Result<SnapshotFacts, StoreError> {
    let mut facts = SnapshotFacts::default();
    for name in dumped() {
        let path = dir.join(format!("{name}.bson"));
        if !path.is_file() {
            return Err(StoreError::Corrupt(format!(
                "{} is missing from the backup",
                path.display()
            )));
        }
        let mut reader = BufReader::new(File::open(&path).map_err(|e| file_error(&path, e))?);
        let mut count = 0u64;
        while !reader
            .fill_buf()
            .map_err(|e| file_error(&path, e))?
            .is_empty()
        {
            let document = Document::from_reader(&mut reader).map_err(|e| {
                StoreError::Corrupt(format!("{}: document {}: {e}", path.display(), count + 1))
            })?;
            learn(&mut facts, name, &document);
            count += 1;
        }
        counted(&mut facts, name, count);
    }
    Ok(facts)
}
