// node-postgres (pg) used the way applications use it, as a transcript (see
// ../diff_psycopg.py): parameterised queries (unnamed statements), named
// prepared queries, transactions, errors, pool switches between two clients.
// Usage: node diff_pg.js URL  (prints one JSON document).
'use strict';
const { Client } = require('pg');

const out = [];

async function step(name, fn) {
  let result;
  try {
    result = await fn();
  } catch (e) {
    result = { error: e.code || null, message: e.message };
  }
  out.push([name, result]);
}

const rows = (r) => (r.rows.length || r.fields.length ? r.rows.map((x) => Object.values(x).map(String)) : r.command);

async function main(url) {
  const a = new Client({ connectionString: url });
  const b = new Client({ connectionString: url });
  await a.connect();
  await b.connect();
  await a.query('DROP TABLE IF EXISTS dn_t');
  await a.query('CREATE TABLE dn_t (id int PRIMARY KEY, v text)');
  await step('param insert', async () => rows(await a.query('INSERT INTO dn_t VALUES ($1, $2)', [1, 'one'])));
  await step('named prepared', async () => rows(await a.query({ name: 'get-v', text: 'SELECT v FROM dn_t WHERE id = $1', values: [1] })));
  await step('other client, same name', async () => rows(await b.query({ name: 'get-v', text: 'SELECT upper(v) FROM dn_t WHERE id = $1', values: [1] })));
  await step('named again', async () => rows(await a.query({ name: 'get-v', text: 'SELECT v FROM dn_t WHERE id = $1', values: [1] })));
  await step('duplicate key', async () => rows(await a.query('INSERT INTO dn_t VALUES ($1, $2)', [1, 'dup'])));
  await step('syntax', async () => rows(await a.query('SELEC $1', [1])));
  await step('transaction', async () => {
    await a.query('BEGIN');
    await a.query('INSERT INTO dn_t VALUES (2, $1)', ['two']);
    await a.query('SAVEPOINT s');
    try { await a.query('INSERT INTO dn_t VALUES (2, $1)', ['dup']); } catch (e) { await a.query('ROLLBACK TO SAVEPOINT s'); }
    await a.query('COMMIT');
    return rows(await a.query('SELECT id, v FROM dn_t ORDER BY id'));
  });
  await step('aborted transaction', async () => {
    await a.query('BEGIN');
    try { await a.query('SELECT 1/0'); } catch (e) { /* expected */ }
    try { await a.query('SELECT 1'); } catch (e) { await a.query('ROLLBACK'); return e.code; }
    return 'not aborted';
  });
  await step('DDL then named', async () => {
    await a.query('DROP TABLE dn_t');
    await a.query('CREATE TABLE dn_t (id text PRIMARY KEY, v int)');
    await b.query('INSERT INTO dn_t VALUES ($1, $2)', ['k', 5]);
    return rows(await b.query({ name: 'get-k', text: 'SELECT v FROM dn_t WHERE id = $1', values: ['k'] }));
  });
  await step('types', async () => rows(await a.query('SELECT $1::int8 AS a, $2::jsonb AS b, $3::text[] AS c, $4::bool AS d', ['1099511627776', { k: 1 }, ['x', 'y'], true])));
  await step('set', async () => rows(await a.query("SET search_path TO public")));
  await step('search_path kept', async () => rows(await a.query('SHOW search_path')));
  await step('other search_path', async () => rows(await b.query('SHOW search_path')));
  await step('application_name', async () => rows(await a.query('SHOW application_name')));
  await a.query('DROP TABLE IF EXISTS dn_t');
  await a.end();
  await b.end();
  console.log(JSON.stringify(out, null, 1));
}

main(process.argv[2]).catch((e) => { console.error(e); process.exit(1); });
