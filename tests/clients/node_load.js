// Real-client load for baton's tests: Node's own HTTP clients, each client
// one connection, sending GETs with 10-100 ms think times until STOP_FILE
// exists. Prints one JSON line:
// {"ok": N, "failed": F, "refused": R, "errors": {kind: n}}.
//
// Usage: node node_load.js URL h2|fetch CLIENTS STOP_FILE
//   h2:    http2.connect (prior knowledge), a new session when one closes;
//          a stream the server refused (REFUSED_STREAM, which a GOAWAY
//          naming an earlier stream also means) was not processed (RFC 9113
//          §8.7), so it is sent again on a new session, as grpc-js does, and
//          counted in "refused", apart from failures
//   fetch: the global fetch (undici), keep-alive HTTP/1.1
'use strict';
const fs = require('fs');
const http2 = require('http2');

const [url, protocol, clients, stopFile] = process.argv.slice(2);
let ok = 0;
let refused = 0;
const errors = {};
const fail = (kind) => { errors[kind] = (errors[kind] || 0) + 1; };
const think = () => new Promise((r) => setTimeout(r, 10 + Math.random() * 90));
const stopped = () => fs.existsSync(stopFile);

// One h2 session per client, replaced when it closes or goes away (GOAWAY).
function h2Client() {
  let session = null;
  const current = () => {
    if (!session || session.closed || session.destroyed) {
      session = http2.connect(url);
      session.on('error', () => {});
      session.on('goaway', () => { session = null; });
    }
    return session;
  };
  const request = () => new Promise((resolve) => {
    let stream;
    try {
      stream = current().request({ ':path': new URL(url).pathname });
    } catch (e) {
      fail(`request: ${e.code || e.message}`);
      return resolve();
    }
    let status = 0;
    stream.on('response', (headers) => { status = headers[':status']; });
    stream.on('data', () => {});
    stream.on('end', () => {
      if (status === 200) ok += 1; else fail(`status ${status}`);
      resolve();
    });
    stream.on('error', (e) => {
      if (stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM) {
        refused += 1;
        session = null;
        return resolve(request());
      }
      fail(`stream: ${e.code || e.message}`);
      resolve();
    });
  });
  return request;
}

function fetchClient() {
  return async () => {
    try {
      const response = await fetch(url);
      await response.text();
      if (response.status === 200) ok += 1; else fail(`status ${response.status}`);
    } catch (e) {
      fail(`fetch: ${(e.cause && e.cause.code) || e.message}`);
    }
  };
}

async function run(request) {
  while (!stopped()) {
    await request();
    await think();
  }
}

const make = protocol === 'h2' ? h2Client : fetchClient;
Promise.all(Array.from({ length: Number(clients) }, () => run(make()))).then(() => {
  const failed = Object.values(errors).reduce((a, b) => a + b, 0);
  console.log(JSON.stringify({ ok, failed, refused, errors }));
  process.exit(0);
});
