//! The storage administrator's hands on the metadata store, for the tests that play the
//! administrator (`rollback.rs`, `names.rs`): edits behind storaged's back, on the embedded
//! store's file or the MongoDB database.

use mongodb::bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use tests::daemon::Storaged;

/// The storage administrator's hands on the metadata store: the embedded store's file, or
/// the MongoDB database.
pub enum Database {
    Sqlite(rusqlite::Connection),
    Mongo(mongodb::Database),
}

impl Database {
    pub async fn of(daemon: &Storaged) -> Database {
        match daemon.meta_url() {
            Some(url) => {
                let client = mongodb::Client::with_uri_str(url).await.expect("client");
                Database::Mongo(client.default_database().expect("the URL names one"))
            }
            None => {
                let path = daemon.data_dir().join("meta.db");
                let conn = rusqlite::Connection::open(path).expect("meta.db");
                conn.busy_timeout(std::time::Duration::from_secs(10))
                    .expect("busy timeout");
                Database::Sqlite(conn)
            }
        }
    }

    pub fn collection(&self, name: &str) -> Option<mongodb::Collection<mongodb::bson::Document>> {
        match self {
            Database::Mongo(db) => Some(db.collection(name)),
            Database::Sqlite(_) => None,
        }
    }

    /// Runs `sql` on the embedded store and checks it changed one row.
    pub fn change_one(&self, sql: &str, params: impl rusqlite::Params) {
        let Database::Sqlite(conn) = self else {
            panic!("not the embedded store");
        };
        assert_eq!(conn.execute(sql, params).expect("edit"), 1, "{sql}");
    }

    /// Points chunk `index` of `ino` at `generation`, or drops its record (`None`).
    pub async fn set_chunk(&self, ino: u64, index: u64, generation: Option<u64>) {
        let Some(chunks) = self.collection("chunks") else {
            let (ino, index) = (ino as i64, index as i64);
            match generation {
                Some(g) => self.change_one(
                    "UPDATE chunks SET generation = ?3 WHERE ino = ?1 AND idx = ?2",
                    rusqlite::params![ino, index, g as i64],
                ),
                None => self.change_one(
                    "DELETE FROM chunks WHERE ino = ?1 AND idx = ?2",
                    rusqlite::params![ino, index],
                ),
            }
            return;
        };
        let filter = doc! { "ino": ino as i64, "index": index as i64 };
        let matched = match generation {
            Some(g) => {
                let update = doc! { "$set": { "generation": g as i64 } };
                chunks
                    .update_one(filter, update)
                    .await
                    .expect("edit")
                    .matched_count
            }
            None => chunks.delete_one(filter).await.expect("edit").deleted_count,
        };
        assert_eq!(matched, 1);
    }

    pub async fn set_size(&self, ino: u64, size: u64) {
        let Some(inodes) = self.collection("inodes") else {
            let sql = "UPDATE inodes SET size = ?1 WHERE ino = ?2";
            self.change_one(sql, rusqlite::params![size as i64, ino as i64]);
            return;
        };
        let update = doc! { "$set": { "size": Bson::Int64(size as i64) } };
        let result = inodes.update_one(doc! { "_id": ino as i64 }, update).await;
        assert_eq!(result.expect("edit").matched_count, 1);
    }

    /// File `ino`'s manifest (signed record kind 5) as stored.
    pub async fn manifest(&self, ino: u64) -> Vec<u8> {
        let Some(signed) = self.collection("signed") else {
            let Database::Sqlite(conn) = self else {
                unreachable!("not MongoDB")
            };
            let sql = "SELECT blob FROM signed WHERE kind = 5 AND id = ?1";
            return conn
                .query_row(sql, [ino as i64], |row| row.get(0))
                .expect("a manifest");
        };
        let filter = doc! { "kind": 5i32, "id": ino as i64 };
        let stored = signed.find_one(filter).await.expect("find");
        let blob = stored.and_then(|d| d.get_binary_generic("blob").ok().cloned());
        blob.expect("a manifest")
    }

    /// Puts `blob` back as file `ino`'s manifest.
    pub async fn set_manifest(&self, ino: u64, blob: &[u8]) {
        let Some(signed) = self.collection("signed") else {
            let sql = "UPDATE signed SET blob = ?2 WHERE kind = 5 AND id = ?1";
            self.change_one(sql, rusqlite::params![ino as i64, blob]);
            return;
        };
        let filter = doc! { "kind": 5i32, "id": ino as i64 };
        let update = doc! { "$set": { "blob": bytes(blob.to_vec()) } };
        let result = signed.update_one(filter, update).await;
        assert_eq!(result.expect("edit").matched_count, 1);
    }

    /// Deletes file `ino`'s manifest (signed record kind 5).
    pub async fn delete_manifest(&self, ino: u64) {
        let Some(signed) = self.collection("signed") else {
            self.change_one(
                "DELETE FROM signed WHERE kind = 5 AND id = ?1",
                [ino as i64],
            );
            return;
        };
        let filter = doc! { "kind": 5i32, "id": ino as i64 };
        let deleted = signed
            .delete_many(filter)
            .await
            .expect("edit")
            .deleted_count;
        assert_eq!(deleted, 1);
    }
}

/// An entry as stored, for swapping what two names point at.
struct Pointed {
    /// The embedded store's key of the row (the name), or MongoDB's `_id`.
    key: Bson,
    ino: i64,
    kind: i64,
    seal: Option<Vec<u8>>,
}

fn bytes(value: Vec<u8>) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: value,
    })
}

impl Database {
    /// The entry of directory `parent` that names inode `ino`.
    async fn pointed(&self, parent: u64, ino: u64) -> Pointed {
        let Some(entries) = self.collection("entries") else {
            let Database::Sqlite(conn) = self else {
                unreachable!()
            };
            let sql = "SELECT name, kind, seal FROM entries WHERE parent = ?1 AND ino = ?2";
            let row = conn.query_row(sql, [parent as i64, ino as i64], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?))
            });
            let (name, kind, seal) = row.expect("the entry");
            return Pointed {
                key: bytes(name),
                ino: ino as i64,
                kind,
                seal,
            };
        };
        let filter = doc! { "parent": parent as i64, "ino": ino as i64 };
        let found: Document = entries
            .find_one(filter)
            .await
            .expect("find")
            .expect("the entry");
        Pointed {
            key: found.get("_id").expect("_id").clone(),
            ino: ino as i64,
            kind: i64::from(found.get_i32("kind").expect("kind")),
            seal: found.get_binary_generic("seal").ok().cloned(),
        }
    }

    /// Points the entry `at` (of `parent`) at what `to` holds: its inode, kind and seal.
    async fn repoint(&self, parent: u64, at: &Pointed, to: &Pointed) {
        let Some(entries) = self.collection("entries") else {
            let Bson::Binary(name) = &at.key else {
                unreachable!()
            };
            let sql =
                "UPDATE entries SET ino = ?1, kind = ?2, seal = ?3 WHERE parent = ?4 AND name = ?5";
            let params = rusqlite::params![to.ino, to.kind, to.seal, parent as i64, name.bytes];
            self.change_one(sql, params);
            return;
        };
        let mut set = doc! { "ino": to.ino, "kind": to.kind as i32 };
        if let Some(seal) = &to.seal {
            set.insert("seal", bytes(seal.clone()));
        }
        let result = entries
            .update_one(doc! { "_id": at.key.clone() }, doc! { "$set": set })
            .await;
        assert_eq!(result.expect("edit").matched_count, 1);
    }

    /// Swaps what the entries of `parent` naming `a` and `b` point at: each name then
    /// stands for the other's inode (as if the two names were swapped).
    pub async fn swap_entries(&self, parent: u64, a: u64, b: u64) {
        let (first, second) = (self.pointed(parent, a).await, self.pointed(parent, b).await);
        self.repoint(parent, &first, &second).await;
        self.repoint(parent, &second, &first).await;
    }

    /// Points the entry of `parent` naming `ino` at inode `other`, its seal kept.
    pub async fn point_entry(&self, parent: u64, ino: u64, other: u64) {
        let at = self.pointed(parent, ino).await;
        let to = Pointed {
            ino: other as i64,
            seal: at.seal.clone(),
            key: Bson::Null,
            kind: at.kind,
        };
        self.repoint(parent, &at, &to).await;
    }

    /// Moves the entry of `parent` naming `ino` into directory `to`, as it is.
    pub async fn move_entry(&self, parent: u64, ino: u64, to: u64) {
        let Some(entries) = self.collection("entries") else {
            let sql = "UPDATE entries SET parent = ?3 WHERE parent = ?1 AND ino = ?2";
            self.change_one(sql, [parent as i64, ino as i64, to as i64]);
            return;
        };
        let filter = doc! { "parent": parent as i64, "ino": ino as i64 };
        let update = doc! { "$set": { "parent": to as i64 } };
        let result = entries.update_one(filter, update).await;
        assert_eq!(result.expect("edit").matched_count, 1);
    }

    /// Makes inode `ino` a symlink to `target` (its entries say so too).
    pub async fn make_symlink(&self, ino: u64, target: &[u8]) {
        let Some(inodes) = self.collection("inodes") else {
            self.change_one("UPDATE entries SET kind = 3 WHERE ino = ?1", [ino as i64]);
            let sql = "UPDATE inodes SET kind = 3, target = ?1, size = ?2 WHERE ino = ?3";
            let params = rusqlite::params![target, target.len() as i64, ino as i64];
            self.change_one(sql, params);
            return;
        };
        let entries = self.collection("entries").expect("entries");
        let kind = doc! { "$set": { "kind": 3i32 } };
        let result = entries.update_one(doc! { "ino": ino as i64 }, kind).await;
        assert_eq!(result.expect("edit").matched_count, 1);
        self.set_target(ino, target).await;
        let kind = doc! { "$set": { "kind": 3i32, "size": target.len() as i64 } };
        let result = inodes.update_one(doc! { "_id": ino as i64 }, kind).await;
        assert_eq!(result.expect("edit").matched_count, 1);
    }

    /// Sets the stored target of symlink `ino`.
    pub async fn set_target(&self, ino: u64, target: &[u8]) {
        let Some(inodes) = self.collection("inodes") else {
            let sql = "UPDATE inodes SET target = ?1 WHERE ino = ?2";
            self.change_one(sql, rusqlite::params![target, ino as i64]);
            return;
        };
        let update = doc! { "$set": { "target": bytes(target.to_vec()) } };
        let result = inodes.update_one(doc! { "_id": ino as i64 }, update).await;
        assert_eq!(result.expect("edit").matched_count, 1);
    }

    /// The stored target of symlink `ino`.
    pub async fn target(&self, ino: u64) -> Vec<u8> {
        let Some(inodes) = self.collection("inodes") else {
            let Database::Sqlite(conn) = self else {
                unreachable!()
            };
            let sql = "SELECT target FROM inodes WHERE ino = ?1";
            return conn
                .query_row(sql, [ino as i64], |r| r.get(0))
                .expect("the symlink");
        };
        let found: Document = inodes
            .find_one(doc! { "_id": ino as i64 })
            .await
            .expect("find")
            .expect("the symlink");
        found.get_binary_generic("target").expect("target").clone()
    }

    /// Every byte of the metadata as the administrator holds it: MongoDB's documents, each
    /// collection's one after another (the embedded store is in the data dir's files).
    pub async fn documents(&self) -> Vec<u8> {
        let Database::Mongo(db) = self else {
            return Vec::new();
        };
        let mut all = Vec::new();
        for name in db.list_collection_names().await.expect("collections") {
            let collection = db.collection::<Document>(&name);
            let mut cursor = collection.find(doc! {}).await.expect("find");
            while cursor.advance().await.expect("next") {
                let document = cursor.deserialize_current().expect("document");
                document.to_writer(&mut all).expect("bson");
            }
        }
        all
    }
}

impl Database {
    /// The stored value of extended attribute `name` of `ino`.
    pub async fn xattr(&self, ino: u64, name: &str) -> Vec<u8> {
        let Some(xattrs) = self.collection("xattrs") else {
            let Database::Sqlite(conn) = self else {
                unreachable!()
            };
            let sql = "SELECT value FROM xattrs WHERE ino = ?1 AND name = ?2";
            let params = rusqlite::params![ino as i64, name.as_bytes()];
            return conn
                .query_row(sql, params, |r| r.get(0))
                .expect("the attribute");
        };
        let filter = doc! { "ino": ino as i64, "name": name };
        let found: Document = xattrs
            .find_one(filter)
            .await
            .expect("find")
            .expect("the attribute");
        found.get_binary_generic("value").expect("value").clone()
    }

    /// Sets the stored value of extended attribute `name` of `ino`.
    pub async fn set_xattr(&self, ino: u64, name: &str, value: &[u8]) {
        let Some(xattrs) = self.collection("xattrs") else {
            let sql = "UPDATE xattrs SET value = ?1 WHERE ino = ?2 AND name = ?3";
            self.change_one(sql, rusqlite::params![value, ino as i64, name.as_bytes()]);
            return;
        };
        let filter = doc! { "ino": ino as i64, "name": name };
        let update = doc! { "$set": { "value": bytes(value.to_vec()) } };
        let result = xattrs.update_one(filter, update).await;
        assert_eq!(result.expect("edit").matched_count, 1);
    }
}
