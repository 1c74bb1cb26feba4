-- A queue file as nbbatch wrote it at schema version 1: one batch "v1"
-- holding one queued job, counted by the insert trigger that version 2
-- drops.  test_queue.c opens it to check that migrating keeps the
-- per-state counters exact.  Keep as is: it stands for files in the wild.
CREATE TABLE batches (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  out_dir TEXT NOT NULL,
  paused INTEGER NOT NULL DEFAULT 0,
  created_ms INTEGER NOT NULL,
  next_seq INTEGER NOT NULL DEFAULT 1);
CREATE TABLE jobs (
  id INTEGER PRIMARY KEY,
  batch_id INTEGER NOT NULL REFERENCES batches(id)
    DEFERRABLE INITIALLY DEFERRED,
  state INTEGER NOT NULL DEFAULT 0 CHECK (state BETWEEN 0 AND 5),
  priority INTEGER NOT NULL DEFAULT 0,
  next_attempt_ms INTEGER NOT NULL DEFAULT 0,
  not_before_ms INTEGER NOT NULL DEFAULT 0,
  offpeak INTEGER NOT NULL DEFAULT 0,
  seq INTEGER NOT NULL,
  count_index INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  attempts_transient INTEGER NOT NULL DEFAULT 0,
  attempts_soft INTEGER NOT NULL DEFAULT 0,
  created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL,
  claimed_ms INTEGER NOT NULL DEFAULT 0,
  lease_expires_ms INTEGER NOT NULL DEFAULT 0,
  lease_owner TEXT,
  key BLOB NOT NULL UNIQUE,
  model TEXT NOT NULL,
  via TEXT NOT NULL CHECK (via IN ('direct', 'batch')),
  aspect TEXT,
  size TEXT,
  out_path TEXT NOT NULL UNIQUE,
  prompt TEXT NOT NULL,
  refs TEXT,
  err_class TEXT,
  err_http INTEGER NOT NULL DEFAULT 0,
  err_status TEXT,
  err_message TEXT,
  checkpoint TEXT);
CREATE INDEX jobs_claim ON jobs
  (priority DESC, id, next_attempt_ms, not_before_ms, batch_id)
  WHERE state = 0;
CREATE INDEX jobs_lease ON jobs (lease_owner) WHERE state = 1;
CREATE TABLE attempts (
  id INTEGER PRIMARY KEY,
  job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  started_ms INTEGER NOT NULL,
  latency_ms INTEGER NOT NULL DEFAULT 0,
  outcome TEXT NOT NULL,
  err_class TEXT,
  http_status INTEGER NOT NULL DEFAULT 0,
  api_status TEXT,
  message TEXT,
  output_path TEXT,
  response_id TEXT,
  model_version TEXT,
  prompt_tokens INTEGER NOT NULL DEFAULT 0,
  output_tokens INTEGER NOT NULL DEFAULT 0,
  thought_tokens INTEGER NOT NULL DEFAULT 0,
  cost_usd REAL NOT NULL DEFAULT 0);
CREATE INDEX attempts_job ON attempts (job_id);
CREATE TABLE batch_counts (
  id INTEGER PRIMARY KEY,
  batch_id INTEGER NOT NULL,
  state INTEGER NOT NULL,
  n INTEGER DEFAULT 0);
CREATE TRIGGER batches_counts AFTER INSERT ON batches BEGIN
  INSERT INTO batch_counts (id, batch_id, state) VALUES
    (NEW.id * 8, NEW.id, 0), (NEW.id * 8 + 1, NEW.id, 1),
    (NEW.id * 8 + 2, NEW.id, 2), (NEW.id * 8 + 3, NEW.id, 3),
    (NEW.id * 8 + 4, NEW.id, 4), (NEW.id * 8 + 5, NEW.id, 5);
END;
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
  UPDATE batch_counts SET n = n + 1
    WHERE id = NEW.batch_id * 8 + NEW.state;
END;
CREATE TRIGGER jobs_count_update AFTER UPDATE OF state, batch_id ON jobs
  WHEN OLD.state <> NEW.state OR OLD.batch_id <> NEW.batch_id BEGIN
  UPDATE batch_counts SET n = n - 1
    WHERE id = OLD.batch_id * 8 + OLD.state;
  UPDATE batch_counts SET n = n + 1
    WHERE id = NEW.batch_id * 8 + NEW.state;
END;
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
  UPDATE batch_counts SET n = n - 1
    WHERE id = OLD.batch_id * 8 + OLD.state;
END;
INSERT INTO batches VALUES (1, 'v1', '/out/v1', 0, 1700000000000, 2);
INSERT INTO jobs (id, batch_id, seq, created_ms, updated_ms, key, model,
  via, out_path, prompt) VALUES (1, 1, 1, 1700000000000, 1700000000000,
  X'6a42364e9147c071909ec2f43aafbf19e07e553345bb350a3fa8667e34381454',
  'gemini-2.5-flash-image', 'direct', '/out/v1/000001-a-fox.png', 'a fox');
PRAGMA user_version = 1;
