//! The tenant Postgres cluster, seen by the provisioning (admin) role.
//!
//! DDL (`CREATE ROLE`, `CREATE DATABASE`) cannot take bind parameters, so the
//! identifiers here are built from validated [`crate::ids::TenantName`]s and
//! configured prefixes only, and always quoted with [`quote_ident`]. Nothing a
//! request carries is ever spliced into SQL.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::config::PostgresConfig;
use crate::control::migrate::{self, MigrateError, MigrationSet, RunAs};
use crate::secret::{ExposeSecret, SecretString};

/// Quote an identifier for SQL (`"` doubled).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quote a string literal for SQL (`'` doubled; standard_conforming_strings on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[derive(Debug, thiserror::Error)]
pub enum PgAdminError {
    #[error("connect to tenant cluster: {0}")]
    Connect(tokio_postgres::Error),
    #[error("{what}: {source}")]
    Sql { what: String, source: tokio_postgres::Error },
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// Admin access to the tenant cluster (provisioning only).
#[derive(Clone)]
pub struct PgAdmin {
    base: tokio_postgres::Config,
}

impl PgAdmin {
    pub fn new(cfg: &PostgresConfig) -> Result<Self, PgAdminError> {
        let mut base: tokio_postgres::Config = cfg.admin_url.expose_secret().parse().map_err(PgAdminError::Connect)?;
        base.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
        base.application_name("sluice-admin");
        Ok(Self { base })
    }

    /// Connect as the admin role, to `dbname` or the URL's own database.
    pub async fn connect(&self, dbname: Option<&str>) -> Result<Client, PgAdminError> {
        let mut cfg = self.base.clone();
        if let Some(db) = dbname {
            cfg.dbname(db);
        }
        let (client, conn) = cfg.connect(NoTls).await.map_err(PgAdminError::Connect)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
        Ok(client)
    }

    /// Connection settings for a tenant's own role on its own database.
    pub fn tenant_config(&self, db: &str, role: &str, password: &SecretString) -> tokio_postgres::Config {
        let mut cfg = self.base.clone();
        cfg.dbname(db).user(role).password(password.expose_secret()).application_name("sluice");
        cfg
    }

    async fn exec(&self, client: &Client, what: &str, sql: &str) -> Result<(), PgAdminError> {
        client.batch_execute(sql).await.map_err(|source| PgAdminError::Sql { what: what.into(), source })
    }

    /// Create a login role with no privileges beyond its own database. `verifier`
    /// is a SCRAM verifier, so the plaintext password never reaches the server.
    pub async fn create_role(&self, role: &str, verifier: &str, connection_limit: i32) -> Result<(), PgAdminError> {
        let c = self.connect(None).await?;
        let sql = format!(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS \
             CONNECTION LIMIT {connection_limit} PASSWORD {}",
            quote_ident(role),
            quote_literal(verifier)
        );
        self.exec(&c, "create role", &sql).await
    }

    /// Create the tenant's database owned by its role; nobody else may connect.
    pub async fn create_database(&self, db: &str, owner: &str) -> Result<(), PgAdminError> {
        let c = self.connect(None).await?;
        let (db_q, owner_q) = (quote_ident(db), quote_ident(owner));
        self.exec(
            &c,
            "create database",
            &format!("CREATE DATABASE {db_q} OWNER {owner_q} TEMPLATE template1 ENCODING 'UTF8'"),
        )
        .await?;
        self.exec(&c, "restrict database", &format!("REVOKE ALL ON DATABASE {db_q} FROM PUBLIC")).await
    }

    /// Enable pgvector, lock down `public`, and apply the tenant template
    /// migrations as the tenant's role.
    pub async fn prepare_tenant_database(&self, db: &str, role: &str) -> Result<(), PgAdminError> {
        let mut c = self.connect(Some(db)).await?;
        self.exec(
            &c,
            "prepare tenant database",
            "CREATE EXTENSION IF NOT EXISTS vector; REVOKE ALL ON SCHEMA public FROM PUBLIC;",
        )
        .await?;
        self.exec(&c, "grant schema", &format!("GRANT ALL ON SCHEMA public TO {}", quote_ident(role))).await?;
        migrate::up(&mut c, MigrationSet::Tenant, &RunAs { role: Some(role.to_owned()) }).await?;
        Ok(())
    }

    /// Drop a database, ending its sessions. Missing is fine.
    pub async fn drop_database(&self, db: &str) -> Result<(), PgAdminError> {
        let c = self.connect(None).await?;
        self.exec(&c, "drop database", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(db))).await
    }

    /// Raise a role's `CONNECTION LIMIT` to at least `limit` (never lowers it).
    pub async fn ensure_connection_limit(&self, role: &str, limit: i32) -> Result<(), PgAdminError> {
        let c = self.connect(None).await?;
        let current: Option<i32> = c
            .query_opt("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .map_err(|source| PgAdminError::Sql { what: "read connection limit".into(), source })?
            .map(|r| r.get(0));
        match current {
            Some(n) if n >= 0 && n < limit => {
                let sql = format!("ALTER ROLE {} CONNECTION LIMIT {limit}", quote_ident(role));
                self.exec(&c, "raise connection limit", &sql).await
            }
            _ => Ok(()),
        }
    }

    /// Rename a tenant's role and database (each only while the old name
    /// exists and the new one does not, so a rerun finishes a partial one),
    /// ending the database's sessions first: Postgres renames no database in use.
    pub async fn rename_tenant(
        &self,
        old_db: &str,
        new_db: &str,
        roles: &[(String, String)],
    ) -> Result<(), PgAdminError> {
        let c = self.connect(None).await?;
        let exists = |sql: &'static str, name: String| {
            let c = &c;
            async move {
                c.query_one(sql, &[&name])
                    .await
                    .map(|r| r.get::<_, bool>(0))
                    .map_err(|source| PgAdminError::Sql { what: "look up a name".into(), source })
            }
        };
        const ROLE: &str = "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)";
        const DB: &str = "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)";
        for (old_role, new_role) in roles {
            if exists(ROLE, old_role.clone()).await? && !exists(ROLE, new_role.clone()).await? {
                let sql = format!("ALTER ROLE {} RENAME TO {}", quote_ident(old_role), quote_ident(new_role));
                self.exec(&c, "rename tenant role", &sql).await?;
            }
        }
        if exists(DB, old_db.into()).await? && !exists(DB, new_db.into()).await? {
            let sql = format!("ALTER DATABASE {} RENAME TO {}", quote_ident(old_db), quote_ident(new_db));
            let mut attempt = 0;
            loop {
                c.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&old_db],
                )
                .await
                .map_err(|source| PgAdminError::Sql { what: "end the tenant's sessions".into(), source })?;
                match self.exec(&c, "rename tenant database", &sql).await {
                    // A pool reconnected between the two statements: end it again.
                    Err(_) if attempt < 10 => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    r => return r,
                }
            }
        }
        Ok(())
    }

    /// Role-level defaults (`ALTER ROLE … SET`), each only when it differs
    /// from what the role has. Values are quoted literals; a superuser-only
    /// setting (`temp_file_limit`) needs a superuser admin role.
    pub async fn ensure_role_settings(&self, role: &str, settings: &[(&str, String)]) -> Result<(), PgAdminError> {
        let c = self.connect(None).await?;
        let current: Vec<String> = c
            .query_opt(
                "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
                 WHERE r.rolname = $1 AND s.setdatabase = 0",
                &[&role],
            )
            .await
            .map_err(|source| PgAdminError::Sql { what: "read role settings".into(), source })?
            .and_then(|r| r.get::<_, Option<Vec<String>>>(0))
            .unwrap_or_default();
        for (name, value) in settings {
            if current.iter().any(|kv| kv == &format!("{name}={value}")) {
                continue;
            }
            let sql = format!("ALTER ROLE {} SET {name} = {}", quote_ident(role), quote_literal(value));
            self.exec(&c, &format!("set the role's {name}"), &sql).await?;
        }
        Ok(())
    }

    /// Make `owner` (a login role, created when missing) the owner of the
    /// tenant database's `sluice` schema and of every table in it, and leave
    /// the tenant's role `SELECT` only (now and for tables created later).
    /// Idempotent. Waits at most 2 s for a lock the tenant holds.
    pub async fn ensure_collection_owner(
        &self,
        db: &str,
        tenant_role: &str,
        owner: &str,
        verifier: &str,
        connection_limit: i32,
    ) -> Result<(), PgAdminError> {
        let c = self.connect(None).await?;
        let exists: bool = c
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", &[&owner])
            .await
            .map_err(|source| PgAdminError::Sql { what: "look up collection owner".into(), source })?
            .get(0);
        let (o, t) = (quote_ident(owner), quote_ident(tenant_role));
        if !exists {
            self.create_role(owner, verifier, connection_limit).await?;
        }
        self.exec(
            &c,
            "let the collection owner connect",
            &format!("GRANT CONNECT ON DATABASE {} TO {o}", quote_ident(db)),
        )
        .await?;
        let tc = self.connect(Some(db)).await?;
        self.exec(&tc, "bound the ownership change", "SET lock_timeout = '2s'; SET statement_timeout = '30s'").await?;
        let tables: Vec<String> = tc
            .query(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'sluice' AND c.relkind IN ('r', 'p') AND pg_get_userbyid(c.relowner) <> $1",
                &[&owner],
            )
            .await
            .map_err(|source| PgAdminError::Sql { what: "list collection tables".into(), source })?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut sql = format!(
            "GRANT USAGE ON SCHEMA public TO {o}; ALTER SCHEMA sluice OWNER TO {o};
             REVOKE ALL ON SCHEMA sluice FROM {t}; GRANT USAGE ON SCHEMA sluice TO {t};"
        );
        for table in &tables {
            sql.push_str(&format!("ALTER TABLE sluice.{} OWNER TO {o};", quote_ident(table)));
        }
        sql.push_str(&format!(
            "REVOKE ALL ON ALL TABLES IN SCHEMA sluice FROM {t}; GRANT SELECT ON ALL TABLES IN SCHEMA sluice TO {t};
             ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA sluice GRANT SELECT ON TABLES TO {t};"
        ));
        self.exec(&tc, "hand the collection tables to their owner", &format!("BEGIN; {sql} COMMIT;")).await
    }

    /// Drop a role. Missing is fine.
    pub async fn drop_role(&self, role: &str) -> Result<(), PgAdminError> {
        let c = self.connect(None).await?;
        self.exec(&c, "drop role", &format!("DROP ROLE IF EXISTS {}", quote_ident(role))).await
    }

    pub async fn role_exists(&self, role: &str) -> Result<bool, PgAdminError> {
        let c = self.connect(None).await?;
        let row = c
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", &[&role])
            .await
            .map_err(|source| PgAdminError::Sql { what: "look up role".into(), source })?;
        Ok(row.get(0))
    }

    pub async fn database_exists(&self, db: &str) -> Result<bool, PgAdminError> {
        let c = self.connect(None).await?;
        let row = c
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[&db])
            .await
            .map_err(|source| PgAdminError::Sql { what: "look up database".into(), source })?;
        Ok(row.get(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
