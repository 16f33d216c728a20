//! The collections, their indexes, and the schema version with its upgrade steps
//! (`docs/format.md` section 7).

use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};

use super::{StoreError, failure};

/// The schema this build writes. Older databases are upgraded on open; newer ones refused.
pub const SCHEMA_VERSION: u32 = 5;

/// The collection holding the schema version: one document `{_id: "vault", version}`.
pub(super) const SCHEMA: &str = "schema";
pub(super) const SCHEMA_ID: &str = "vault";

/// MongoDB's "NamespaceExists": the collection was created already.
const NAMESPACE_EXISTS: i32 = 48;

/// Every collection of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coll {
    Settings,
    Inodes,
    Entries,
    Chunks,
    Garbage,
    Xattrs,
    WrappedKeys,
    Users,
    Groups,
    Sequences,
    Sessions,
    Audit,
    Signed,
    UsedChallenges,
}

impl Coll {
    pub const ALL: [Coll; 14] = [
        Coll::Settings,
        Coll::Inodes,
        Coll::Entries,
        Coll::Chunks,
        Coll::Garbage,
        Coll::Xattrs,
        Coll::WrappedKeys,
        Coll::Users,
        Coll::Groups,
        Coll::Sequences,
        Coll::Sessions,
        Coll::Audit,
        Coll::Signed,
        Coll::UsedChallenges,
    ];

    /// The schema version that made this collection: a dump of an older one has none.
    pub fn since(self) -> u32 {
        match self {
            Coll::Signed => 3,
            Coll::UsedChallenges => 4,
            _ => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Coll::Settings => "settings",
            Coll::Inodes => "inodes",
            Coll::Entries => "entries",
            Coll::Chunks => "chunks",
            Coll::Garbage => "garbage",
            Coll::Xattrs => "xattrs",
            Coll::WrappedKeys => "wrapped_keys",
            Coll::Users => "users",
            Coll::Groups => "groups",
            Coll::Sequences => "sequences",
            Coll::Sessions => "sessions",
            Coll::Audit => "audit",
            Coll::Signed => "signed",
            Coll::UsedChallenges => "used_challenges",
        }
    }
}

/// Handles on every collection of one database.
#[derive(Clone, Debug)]
pub struct Collections {
    all: Vec<Collection<Document>>,
}

impl Collections {
    pub fn new(db: &Database) -> Collections {
        Collections {
            all: Coll::ALL
                .iter()
                .map(|c| db.collection::<Document>(c.name()))
                .collect(),
        }
    }

    pub fn get(&self, which: Coll) -> &Collection<Document> {
        &self.all[which as usize]
    }
}

/// The indexes of schema version 1, beyond `_id`: (collection, keys, unique, only where the
/// first key exists).
fn indexes_v1() -> Vec<(Coll, Document, bool, bool)> {
    vec![
        (Coll::Inodes, doc! { "orphaned_at": 1 }, false, true),
        (Coll::Entries, doc! { "parent": 1, "name": 1 }, true, false),
        (Coll::Chunks, doc! { "ino": 1, "index": 1 }, true, false),
        (
            Coll::Garbage,
            doc! { "ino": 1, "index": 1, "generation": 1 },
            true,
            false,
        ),
        (Coll::Xattrs, doc! { "ino": 1, "name": 1 }, true, false),
        (
            Coll::WrappedKeys,
            doc! { "ino": 1, "principal": 1 },
            true,
            false,
        ),
        (Coll::Users, doc! { "name": 1 }, true, false),
        (Coll::Groups, doc! { "name": 1 }, true, false),
        (Coll::Groups, doc! { "members": 1 }, false, false),
        (Coll::Sessions, doc! { "expires": 1 }, false, false),
    ]
}

/// Version 1: every collection (created up front, since a transaction on an older server may
/// not create one) and its indexes. Idempotent, so that two storaged instances opening a new
/// database at once both succeed.
async fn step_v1(db: &Database, collections: &Collections) -> Result<(), StoreError> {
    for which in Coll::ALL {
        match db.create_collection(which.name()).await {
            Ok(()) => {}
            Err(error) if failure::code(&error) == Some(NAMESPACE_EXISTS) => {}
            Err(error) => return Err(failure::store_error(&error)),
        }
    }
    for (which, keys, unique, partial) in indexes_v1() {
        let mut options = IndexOptions::builder().unique(unique).build();
        if partial {
            let field = keys.keys().next().cloned().unwrap_or_default();
            options.partial_filter_expression = Some(doc! { field: { "$exists": true } });
        }
        let model = IndexModel::builder().keys(keys).options(options).build();
        collections
            .get(which)
            .create_index(model)
            .await
            .map_err(|e| failure::store_error(&e))?;
    }
    Ok(())
}

/// Version 2: when each chunk file went on the garbage list (`since`), so that the collector
/// keeps it a grace period (for backups taken meanwhile); files listed before the upgrade
/// count from it. Idempotent: only documents without the field get it.
async fn step_v2(collections: &Collections) -> Result<(), StoreError> {
    let garbage = collections.get(Coll::Garbage);
    garbage
        .update_many(
            doc! { "since": { "$exists": false } },
            doc! { "$set": { "since": crate::meta::now() } },
        )
        .await
        .map_err(|e| failure::store_error(&e))?;
    let model = IndexModel::builder().keys(doc! { "since": 1 }).build();
    garbage
        .create_index(model)
        .await
        .map_err(|e| failure::store_error(&e))?;
    Ok(())
}

/// Creates collection `which` (if it is not there yet) with one index on `keys`.
async fn create_indexed(
    db: &Database,
    collections: &Collections,
    which: Coll,
    (keys, unique): (Document, bool),
) -> Result<(), StoreError> {
    match db.create_collection(which.name()).await {
        Ok(()) => {}
        Err(error) if failure::code(&error) == Some(NAMESPACE_EXISTS) => {}
        Err(error) => return Err(failure::store_error(&error)),
    }
    let options = IndexOptions::builder().unique(unique).build();
    let model = IndexModel::builder().keys(keys).options(options).build();
    collections
        .get(which)
        .create_index(model)
        .await
        .map_err(|e| failure::store_error(&e))?;
    Ok(())
}

/// Version 3: the signed records (docs/format.md section 5), one collection with a unique
/// index on (kind, id, sub). Idempotent like version 1.
async fn step_v3(db: &Database, collections: &Collections) -> Result<(), StoreError> {
    let keys = doc! { "kind": 1, "id": 1, "sub": 1 };
    create_indexed(db, collections, Coll::Signed, (keys, true)).await
}

/// Version 4: the login challenges answered and not expired yet, indexed by when they expire
/// (docs/format.md section 7). Idempotent like version 1.
async fn step_v4(db: &Database, collections: &Collections) -> Result<(), StoreError> {
    let keys = doc! { "expires": 1 };
    create_indexed(db, collections, Coll::UsedChallenges, (keys, false)).await
}

/// Brings the database to [`SCHEMA_VERSION`], or refuses a newer one without touching it.
pub async fn migrate(db: &Database, collections: &Collections) -> Result<(), StoreError> {
    let schema = db.collection::<Document>(SCHEMA);
    let found = match schema
        .find_one(doc! { "_id": SCHEMA_ID })
        .await
        .map_err(|e| failure::store_error(&e))?
    {
        None => 0,
        Some(d) => super::docs::Fields::new(&d, SCHEMA).u32("version")?,
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    // Each step takes the schema from version N to N + 1; a new version appends one.
    for next in found + 1..=SCHEMA_VERSION {
        match next {
            1 => step_v1(db, collections).await?,
            2 => step_v2(collections).await?,
            3 => step_v3(db, collections).await?,
            4 => step_v4(db, collections).await?,
            // Entries gain an optional `seal` (docs/format.md section 5.6): nothing to change,
            // but a storaged that would drop it on a rename must not open the database.
            5 => {}
            _ => unreachable!("no upgrade step to schema version {next}"),
        }
        // $max: a slower instance finishing the same step never moves the version back.
        schema
            .update_one(
                doc! { "_id": SCHEMA_ID },
                doc! {
                    "$max": { "version": i64::from(next) },
                    "$set": { "upgraded_by": concat!("storaged ", env!("CARGO_PKG_VERSION")) },
                },
            )
            .upsert(true)
            .await
            .map_err(|e| failure::store_error(&e))?;
        tracing::info!(version = next, "metadata schema upgraded");
    }
    Ok(())
}
