//! PostgreSQL (and TimescaleDB) sink, exactly-once.
//!
//! Rows are encoded as binary `COPY` tuples as they are written
//! ([`copy`]); the epoch's tuples are also its checkpoint state. Commit is
//! one PostgreSQL transaction per epoch:
//!
//! ```text
//! BEGIN
//!   SELECT epoch, lineage FROM tickflow_offsets WHERE query = $1 FOR UPDATE  -- fence
//!   per table: COPY stage FROM STDIN (FORMAT binary); merge stage into table
//!   upsert tickflow_offsets (query, epoch, lineage, positions)
//! COMMIT
//! ```
//!
//! so the rows and the epoch's source positions become visible together or
//! not at all. On start the sink reads the committed epoch back and makes
//! the restart decision of [`crate::sink::epochs`]: the restored epoch
//! committed (carry on), the one before (commit the checkpointed tuples
//! now), anything else refused. Merges upsert by the stream's row key
//! ([`table`]), so even applying an epoch twice would leave the same rows.
//!
//! The fence: each commit expects the epoch and lineage this sink last saw
//! committed. Another worker committing for the same query in between
//! makes the commit fail instead of interleaving two histories.

pub mod copy;
pub mod table;
pub mod tls;
mod wait;

pub use wait::wait_until_reachable;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, LargeBinaryArray, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, UInt64Type};
use postgres::Client;
use postgres::error::SqlState;

use crate::runner::faults;
use crate::runner::{
    ConnectorError, DeadLetter, Positions, RestoredSink, RowKind, Sink, SinkCheckpoint,
};
use crate::sink::epochs::{Committed, FreshStart, Recovery, recovery};
use table::{TableSpec, offsets_table_sql};

/// The table of committed epochs, per query.
pub const OFFSETS_TABLE: &str = "tickflow_offsets";

/// Advisory lock key held while creating tables ("tkfl").
const DDL_LOCK: i64 = 0x746b_666c;

/// Where the sink connects. The password is kept apart from the URL so
/// it can come from a Secret and never be logged.
#[derive(Clone)]
pub struct PostgresConnection {
    /// `postgres://user@host:port/db?sslmode=…` or libpq `key=value` pairs.
    pub url: String,
    pub password: Option<Password>,
    /// TLS options where the URL gives none (libpq's `PGSSLMODE`, …).
    pub tls_defaults: tls::TlsOptions,
}

/// A password as given, or a file read at every connect: a mounted Secret
/// that is rotated (or fixed) takes effect without a restart.
#[derive(Clone)]
pub enum Password {
    Value(String),
    File(std::path::PathBuf),
}

impl Password {
    fn read(&self) -> Result<String, String> {
        match self {
            Self::Value(p) => Ok(p.clone()),
            Self::File(path) => std::fs::read_to_string(path)
                .map(|p| p.strip_suffix('\n').unwrap_or(&p).to_string())
                .map_err(|e| format!("reading the password file {}: {e}", path.display())),
        }
    }
}

impl std::fmt::Debug for PostgresConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConnection")
            .field("url", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl PostgresConnection {
    /// The client settings (the URL without its TLS options) and the TLS
    /// options in effect.
    fn config(&self) -> Result<(postgres::Config, tls::TlsOptions), String> {
        let (url, tls) = tls::split_tls_options(&self.url)?;
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| format!("the PostgreSQL URL does not parse: {e}"))?;
        if let Some(p) = &self.password {
            config.password(p.read()?);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("tickflow-worker");
        config.keepalives(true);
        Ok((config, tls.or(&self.tls_defaults)))
    }

    /// A new client, connected and authenticated.
    fn open(&self) -> Result<Client, PgError> {
        let refused = |message| PgError::Refused {
            target: self.describe(),
            message,
        };
        let (mut config, tls) = self.config().map_err(refused)?;
        let (ssl_mode, connector) = tls::connector(&tls).map_err(refused)?;
        config.ssl_mode(ssl_mode);
        config
            .connect(connector)
            .map_err(|e| classify(self.describe(), "connecting", &e))
    }

    /// `user@host:port/db`, for messages (never the password).
    pub fn describe(&self) -> String {
        let Ok((c, _)) = self.config() else {
            return "(unparsable URL)".into();
        };
        let host = match c.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        format!(
            "{}@{host}:{port}/{}",
            c.get_user().unwrap_or("?"),
            c.get_dbname().unwrap_or("?")
        )
    }
}

/// One stream bound to one table.
#[derive(Clone, Debug)]
pub struct PostgresTarget {
    pub spec: TableSpec,
}

impl PostgresTarget {
    /// `stream`'s rows into `table` (`[schema.]table`), keyed by the
    /// stream's row key.
    pub fn for_stream(stream: &crate::engine::RunningStream, table: &str) -> Result<Self, String> {
        let spec = TableSpec::new(
            &stream.name,
            table,
            &stream.output_schema,
            stream.row_key.as_deref(),
        )?;
        Ok(Self { spec })
    }
}

/// The targets of `(stream, table)` bindings; a table takes one stream.
pub fn targets<'a>(
    pipeline: &crate::engine::Pipeline,
    bindings: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<PostgresTarget>, String> {
    let mut targets: Vec<PostgresTarget> = Vec::new();
    for (name, table) in bindings {
        let stream = pipeline
            .streams()
            .iter()
            .find(|s| &s.name == name)
            .ok_or_else(|| format!("--output {name}=postgres:{table}: no stream `{name}`"))?;
        let target = PostgresTarget::for_stream(stream, table)?;
        if let Some(other) = targets
            .iter()
            .find(|t| t.spec.qualified() == target.spec.qualified())
        {
            return Err(format!(
                "--output {name}=postgres:{table}: stream `{}` writes that table already",
                other.spec.stream
            ));
        }
        targets.push(target);
    }
    Ok(targets)
}

/// The prefix of a `--output STREAM=postgres:TABLE` binding.
pub const BINDING_PREFIX: &str = "postgres:";

/// The table of a `postgres:TABLE` binding, if it is one.
pub fn bound_table(binding: &std::path::Path) -> Option<String> {
    let s = binding.to_str()?;
    s.strip_prefix(BINDING_PREFIX).map(str::to_string)
}

#[derive(Debug, thiserror::Error)]
enum PgError {
    /// The server could not be reached or the connection broke: a new one
    /// (after a restart from the checkpoint) may succeed.
    #[error("PostgreSQL {target}: {message}")]
    Connection { target: String, message: String },
    /// The server refused (credentials, permissions, a table that does not
    /// fit): retrying changes nothing.
    #[error("PostgreSQL {target}: {message}")]
    Refused { target: String, message: String },
}

impl From<PgError> for ConnectorError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Connection { .. } => ConnectorError::transient(e),
            PgError::Refused { .. } => ConnectorError::fatal(e),
        }
    }
}

/// A table's open epoch: its tuples, in write order.
struct TableOutput {
    target: PostgresTarget,
    stage: String,
    tuples: Vec<u8>,
    rows: u64,
    committed_rows: u64,
}

/// The run loop's PostgreSQL sink.
pub struct PostgresOutput {
    connection: PostgresConnection,
    /// Key of this query's row in [`OFFSETS_TABLE`].
    query: String,
    lineage: String,
    fresh_start: FreshStart,
    tables: Vec<TableOutput>,
    client: Option<Client>,
    /// What this sink last saw committed for the query (the fence).
    committed: Option<Committed>,
    /// Commits in this process (for the crash point inside the commit).
    commits: u64,
    nul_replaced: u64,
}

impl PostgresOutput {
    pub fn new(
        connection: PostgresConnection,
        query: String,
        targets: Vec<PostgresTarget>,
        lineage: String,
        fresh_start: FreshStart,
    ) -> Self {
        let tables = targets
            .into_iter()
            .enumerate()
            .map(|(i, target)| TableOutput {
                target,
                stage: format!("tickflow_stage_{i}"),
                tuples: Vec::new(),
                rows: 0,
                committed_rows: 0,
            })
            .collect();
        Self {
            connection,
            query,
            lineage,
            fresh_start,
            tables,
            client: None,
            committed: None,
            commits: 0,
            nul_replaced: 0,
        }
    }

    fn target(&self) -> String {
        self.connection.describe()
    }

    fn error(&self, doing: &str, e: &postgres::Error) -> PgError {
        classify(self.target(), doing, e)
    }

    fn connect(&mut self) -> Result<(), PgError> {
        self.client = Some(self.connection.open()?);
        Ok(())
    }

    fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("connected in start")
    }

    /// Creates the offsets table, each target table (when missing) and
    /// its staging table; checks that an existing table has every column.
    fn prepare_tables(&mut self) -> Result<(), PgError> {
        let timescale = {
            let sql = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')";
            let row = self.client().query_one(sql, &[]);
            let row = row.map_err(|e| self.error("looking for TimescaleDB", &e))?;
            row.get::<_, bool>(0)
        };
        // Workers starting together would race on CREATE TABLE IF NOT EXISTS
        // (a unique violation in the catalog): the DDL runs under a lock.
        let r = self
            .client()
            .batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({DDL_LOCK})"));
        r.map_err(|e| self.error("locking for table creation", &e))?;
        let sql = offsets_table_sql(OFFSETS_TABLE);
        let r = self.client().batch_execute(&sql);
        r.map_err(|e| self.error(&format!("creating {OFFSETS_TABLE}"), &e))?;
        for i in 0..self.tables.len() {
            let spec = self.tables[i].target.spec.clone();
            let stage = self.tables[i].stage.clone();
            let missing = self.missing_columns(&spec)?;
            match missing {
                None => {
                    let r = self.client().batch_execute(&spec.create_sql());
                    r.map_err(|e| self.error(&format!("creating table {}", spec.qualified()), &e))?;
                    if let (true, Some(sql)) = (timescale, spec.hypertable_sql()) {
                        let r = self.client().batch_execute(&sql);
                        r.map_err(|e| self.error("creating a hypertable", &e))?;
                    }
                }
                Some(m) if m.is_empty() => {}
                Some(m) => {
                    return Err(PgError::Refused {
                        target: self.target(),
                        message: format!(
                            "table {} exists but has no column {} (stream `{}` writes them); drop it or write to another table",
                            spec.qualified(),
                            m.join(", "),
                            spec.stream
                        ),
                    });
                }
            }
            if spec.staged() {
                let r = self.client().batch_execute(&spec.create_stage_sql(&stage));
                r.map_err(|e| self.error("creating the staging table", &e))?;
            }
        }
        let r = self.client().batch_execute("COMMIT");
        r.map_err(|e| self.error("creating the tables", &e))
    }

    /// `None`: the table does not exist; else the stream's columns it lacks.
    fn missing_columns(&mut self, spec: &TableSpec) -> Result<Option<Vec<String>>, PgError> {
        let sql = "SELECT column_name::text FROM information_schema.columns \
                   WHERE table_schema = COALESCE($1, current_schema()) AND table_name = $2";
        let rows = self.client().query(sql, &[&spec.schema, &spec.table]);
        let rows = rows.map_err(|e| self.error("reading the table's columns", &e))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let have: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(Some(
            spec.columns
                .iter()
                .filter(|c| !have.contains(&c.name))
                .map(|c| c.name.clone())
                .collect(),
        ))
    }

    fn read_committed(&mut self) -> Result<Option<Committed>, PgError> {
        let sql = format!("SELECT epoch, lineage FROM {OFFSETS_TABLE} WHERE query = $1");
        let query = self.query.clone();
        let row = self.client().query_opt(&sql, &[&query]);
        let row = row.map_err(|e| self.error("reading the committed epoch", &e))?;
        Ok(row.as_ref().map(committed_from))
    }

    /// The epoch's tuples and positions, in one transaction (see the module
    /// documentation).
    fn commit_epoch(
        &mut self,
        epoch: u64,
        positions: &Positions,
        nth: Option<u64>,
    ) -> Result<(), PgError> {
        let positions = serde_json::to_string(positions).expect("JSON values serialize");
        let client = self.client.as_mut().expect("connected in start");
        let attempt = CommitAttempt {
            query: &self.query,
            lineage: &self.lineage,
            expected: self.committed.as_ref(),
            tables: &self.tables,
            nth,
        };
        match attempt.run(client, epoch, &positions) {
            Ok(()) => {}
            Err(CommitFailure::Client(doing, e)) => return Err(self.error(&doing, &e)),
            Err(CommitFailure::Refused(message)) => {
                return Err(PgError::Refused {
                    target: self.target(),
                    message,
                });
            }
        }
        self.committed = Some(Committed {
            epoch,
            lineage: Some(self.lineage.clone()),
        });
        for t in &mut self.tables {
            t.committed_rows += t.rows;
            t.rows = 0;
            t.tuples.clear();
        }
        Ok(())
    }

    /// The restored epoch's tuples, from the checkpoint state.
    fn restore_tuples(&mut self, state: &[RecordBatch]) -> Result<(), String> {
        for batch in state {
            let (Some(stream), Some(rows), Some(tuples)) = (
                batch
                    .column_by_name("stream")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>()),
                batch
                    .column_by_name("rows")
                    .and_then(|c| c.as_primitive_opt::<UInt64Type>()),
                batch
                    .column_by_name("tuples")
                    .and_then(|c| c.as_any().downcast_ref::<LargeBinaryArray>()),
            ) else {
                return Err("the checkpoint's PostgreSQL output has an unexpected layout".into());
            };
            for i in 0..batch.num_rows() {
                let name = stream.value(i);
                let Some(t) = self
                    .tables
                    .iter_mut()
                    .find(|t| t.target.spec.stream == name)
                else {
                    return Err(format!(
                        "the checkpoint holds uncommitted PostgreSQL rows of stream `{name}`, which this run writes nowhere; bind it to its table again to commit them"
                    ));
                };
                t.tuples.extend_from_slice(tuples.value(i));
                t.rows += rows.value(i);
            }
        }
        Ok(())
    }
}

fn state_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("stream", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("tuples", DataType::LargeBinary, false),
    ]))
}

/// Why a commit transaction failed.
enum CommitFailure {
    /// A client call failed while doing the first part.
    Client(String, postgres::Error),
    Refused(String),
}

/// One epoch's transaction.
struct CommitAttempt<'a> {
    query: &'a str,
    lineage: &'a str,
    /// The fence: what must be committed for the query before this epoch.
    expected: Option<&'a Committed>,
    tables: &'a [TableOutput],
    /// Which of this process's epoch commits this is, for the crash point
    /// (`None`: the commit of a start).
    nth: Option<u64>,
}

impl CommitAttempt<'_> {
    fn run(&self, client: &mut Client, epoch: u64, positions: &str) -> Result<(), CommitFailure> {
        let at = |doing: &str| {
            let doing = doing.to_string();
            move |e| CommitFailure::Client(doing, e)
        };
        let mut tx = client.transaction().map_err(at("beginning the commit"))?;
        let sql = format!("SELECT epoch, lineage FROM {OFFSETS_TABLE} WHERE query = $1 FOR UPDATE");
        let found = tx
            .query_opt(&sql, &[&self.query])
            .map_err(at("reading the committed epoch"))?
            .as_ref()
            .map(committed_from);
        if found.as_ref() != self.expected {
            return Err(CommitFailure::Refused(fenced_message(
                self.query,
                self.expected,
                found.as_ref(),
            )));
        }
        for t in self.tables.iter().filter(|t| t.rows > 0) {
            let spec = &t.target.spec;
            let doing = format!("copying into {}", spec.qualified());
            let mut w = tx.copy_in(&spec.copy_sql(&t.stage)).map_err(at(&doing))?;
            let written = w
                .write_all(copy::HEADER)
                .and_then(|()| w.write_all(&t.tuples))
                .and_then(|()| w.write_all(copy::TRAILER));
            // The server's reason for a failed COPY comes with `finish`.
            let finished = w.finish().map_err(at(&doing))?;
            if let Err(e) = written {
                return Err(CommitFailure::Refused(format!("{doing}: {e}")));
            }
            debug_assert_eq!(finished, t.rows);
            for sql in spec.merge_sql(&t.stage) {
                tx.batch_execute(&sql)
                    .map_err(at(&format!("merging into {}", spec.qualified())))?;
            }
        }
        if let Some(nth) = self.nth {
            faults::crash_point("postgres-before-commit", nth);
        }
        let sql = format!(
            "INSERT INTO {OFFSETS_TABLE} (query, epoch, lineage, positions) \
             VALUES ($1, $2, $3, ($4::text)::jsonb) \
             ON CONFLICT (query) DO UPDATE SET epoch = EXCLUDED.epoch, lineage = EXCLUDED.lineage, \
             positions = EXCLUDED.positions, committed_at = now()"
        );
        tx.execute(
            &sql,
            &[&self.query, &(epoch as i64), &self.lineage, &positions],
        )
        .map_err(at("recording the epoch"))?;
        tx.commit().map_err(at("committing"))
    }
}

fn fenced_message(query: &str, expected: Option<&Committed>, found: Option<&Committed>) -> String {
    let show = |c: Option<&Committed>| c.map_or("nothing".to_string(), Committed::describe);
    format!(
        "query `{query}` in {OFFSETS_TABLE}: expected {} committed but found {}: another worker writes this query's output; stopping rather than interleave two histories",
        show(expected),
        show(found)
    )
}

/// The committed epoch of a `SELECT epoch, lineage FROM tickflow_offsets` row.
fn committed_from(row: &postgres::Row) -> Committed {
    Committed {
        epoch: row.get::<_, i64>(0) as u64,
        lineage: Some(row.get(1)),
    }
}

/// An error with its causes, for messages ("error connecting to server:
/// Connection refused (os error 111)").
/// Classifies a client error: broken connections may heal, anything the
/// server answered with an error will not.
fn classify(target: String, doing: &str, e: &postgres::Error) -> PgError {
    match e.as_db_error() {
        Some(db) => PgError::Refused {
            target,
            message: format!(
                "{doing}: {} ({}){}",
                db.message(),
                db.code().code(),
                match db.code() {
                    c if *c == SqlState::INVALID_PASSWORD
                        || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
                        "; check the user, the password (TICKFLOW_POSTGRES_PASSWORD) and sslmode",
                    _ => "",
                }
            ),
        },
        None => {
            let chain = error_chain(e);
            let hint = if chain.contains("TLS handshake") {
                "; check sslmode and sslrootcert (the CA that signed the server's \
                 certificate; verify-full also needs the host's name in it)"
            } else {
                ""
            };
            PgError::Connection {
                target,
                message: format!("{doing}: {chain}{hint}"),
            }
        }
    }
}

fn error_chain(e: &postgres::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

impl Sink for PostgresOutput {
    fn name(&self) -> &str {
        "postgres"
    }

    fn start(
        &mut self,
        restored: Option<RestoredSink<'_>>,
        positions: &Positions,
    ) -> Result<bool, ConnectorError> {
        self.connect()?;
        self.prepare_tables()?;
        let committed = self.read_committed()?;
        let epoch = restored.as_ref().map(|r| r.epoch);
        let what = recovery(epoch, committed.as_ref(), &self.lineage, self.fresh_start).map_err(
            |why| {
                ConnectorError::fatal(anyhow::anyhow!(
                    "PostgreSQL {}: query `{}` in {OFFSETS_TABLE}: {why}",
                    self.target(),
                    self.query
                ))
            },
        )?;
        self.committed = committed;
        if let (Some(r), Recovery::Resend) = (restored, what) {
            self.restore_tuples(&r.state)
                .map_err(|e| ConnectorError::fatal(anyhow::Error::msg(e)))?;
            self.commit_epoch(r.epoch, positions, None)?;
            tracing::warn!(
                epoch = r.epoch,
                "the restored epoch's PostgreSQL transaction had not committed: committed it now"
            );
            return Ok(true);
        }
        // Record the start (restored epoch, or 0) under this lineage: a
        // no-op after a clean stop, and it claims the query for a fresh start.
        self.commit_epoch(epoch.unwrap_or(0), positions, None)?;
        Ok(false)
    }

    fn write(
        &mut self,
        stream: &str,
        kind: RowKind,
        rows: &RecordBatch,
    ) -> Result<(), ConnectorError> {
        let delete = match kind {
            RowKind::Results => false,
            RowKind::Deletes => true,
            RowKind::Late => return Ok(()),
        };
        let Some(t) = self
            .tables
            .iter_mut()
            .find(|t| t.target.spec.stream == stream)
        else {
            return Ok(());
        };
        let change = t.target.spec.staged().then_some(copy::Change {
            first_seq: t.rows as i64,
            delete,
        });
        if delete && change.is_none() {
            return Err(ConnectorError::fatal(anyhow::anyhow!(
                "stream `{stream}` deletes rows but has no row key to delete them by"
            )));
        }
        let notes = copy::encode_rows(rows, change, &mut t.tuples)
            .map_err(|e| ConnectorError::fatal(anyhow::anyhow!("stream `{stream}`: {e}")))?;
        t.rows += rows.num_rows() as u64;
        if notes.nul_replaced > 0 {
            if self.nul_replaced == 0 {
                tracing::warn!(
                    stream,
                    "text with NUL characters, which PostgreSQL cannot store: each NUL is written as U+FFFD"
                );
            }
            self.nul_replaced += notes.nul_replaced;
        }
        Ok(())
    }

    fn dead_letters(&mut self, _bad: &[DeadLetter]) -> Result<(), ConnectorError> {
        // Dead letters go to files or Kafka, never into result tables.
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<SinkCheckpoint, ConnectorError> {
        let open: Vec<&TableOutput> = self.tables.iter().filter(|t| t.rows > 0).collect();
        let state = match open.is_empty() {
            true => Vec::new(),
            false => vec![
                RecordBatch::try_new(
                    state_schema(),
                    vec![
                        Arc::new(StringArray::from_iter_values(
                            open.iter().map(|t| t.target.spec.stream.as_str()),
                        )),
                        Arc::new(UInt64Array::from_iter_values(open.iter().map(|t| t.rows))),
                        Arc::new(LargeBinaryArray::from_iter_values(
                            open.iter().map(|t| t.tuples.as_slice()),
                        )),
                    ],
                )
                .expect("columns match the state schema"),
            ],
        };
        Ok(SinkCheckpoint {
            position: serde_json::json!({ "epoch": epoch }),
            state,
        })
    }

    fn commit(&mut self, epoch: u64, positions: &Positions) -> Result<(), ConnectorError> {
        self.commits += 1;
        self.commit_epoch(epoch, positions, Some(self.commits))?;
        Ok(())
    }

    fn records_out(&self) -> BTreeMap<String, u64> {
        self.tables
            .iter()
            .map(|t| {
                (
                    format!("postgres:{}", t.target.spec.table),
                    t.committed_rows,
                )
            })
            .collect()
    }

    fn pending_bytes(&self) -> u64 {
        self.tables.iter().map(|t| t.tuples.len() as u64).sum()
    }
}
