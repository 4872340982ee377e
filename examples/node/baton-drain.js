// Drain a Node.js HTTP server without failing a request, for servers run as
// baton workers (`baton serve -- node app.js`). Works with plain `http`,
// express and anything else built on `http.Server`:
//
//   const drain = require('./baton-drain');
//   const server = http.createServer(app);
//   server.listen({ fd: 3 });          // the socket baton passes
//   drain(server);                     // on SIGTERM: drain, then exit 0
//
// Node's own `server.close()` (Node >= 19) destroys every idle keep-alive
// socket at once, racing each client about to reuse one: that client sees a
// reset. On the signal, this instead:
// - stops accepting at once (the other workers take the queue), without
//   touching open connections (`net.Server#close`);
// - answers every later request with `Connection: close`, so busy clients
//   leave after their next answer;
// - keeps idle keep-alive connections for `graceMs`, so that each client's
//   next request is answered, then closes those still idle;
// - exits 0 when the last connection has closed.
//
// `graceMs` defaults to DRAIN_GRACE_MS from the environment, else 5000 (5 s).
// Keep it longer than your clients' think time, and below baton's
// --drain-timeout (30 s by default), after which baton kills the worker.
//
// Connections that are not request/response end only when the application
// ends them: `onDrain` is called when the drain starts, to end event streams
// cleanly and close WebSockets with a close frame (1001, going away), so
// that their clients reconnect to the new workers instead of being cut when
// the worker exits. The worker exits once they have closed too.

'use strict';
const net = require('net');

const envGraceMs = Number.parseInt(process.env.DRAIN_GRACE_MS, 10);
const DEFAULT_GRACE_MS = envGraceMs >= 0 ? envGraceMs : 5000;

module.exports = function drain(server, { graceMs = DEFAULT_GRACE_MS, signal = 'SIGTERM', onDrain, onDrained } = {}) {
  let draining = false;
  // Before the application's own handler, so the header is set before any
  // response is written.
  server.prependListener('request', (req, res) => {
    if (draining) res.shouldKeepAlive = false;
  });
  // Idle connections must outlive the grace: Node's default (5 s) would close
  // them under a client about to reuse one.
  server.keepAliveTimeout = Math.max(server.keepAliveTimeout, graceMs + 5000);
  process.on(signal, () => {
    if (draining) return;
    draining = true;
    net.Server.prototype.close.call(server, () => (onDrained ? onDrained() : process.exit(0)));
    if (onDrain) onDrain();
    setTimeout(() => server.closeIdleConnections(), graceMs).unref();
  });
  return server;
};
