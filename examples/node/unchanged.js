// A plain Node http server as Node's documentation writes it, stopped the
// documented way (`server.close()` on SIGTERM), unchanged apart from taking
// its listening socket on descriptor 3:
//
//   baton serve --workers 2 -- node examples/node/unchanged.js
//
// Node closes its idle keep-alive connections the moment it stops, racing
// clients that are sending their next request on them. baton's rescue
// (`--rescue-connections`, on by default) keeps those requests from being
// lost; server.js with baton-drain.js avoids the race in the program.
'use strict';
const http = require('http');
const server = http.createServer((req, res) => {
  let received = 0;
  req.on('data', (chunk) => { received += chunk.length; });
  req.on('end', () => res.end(`Process handled by pid: ${process.pid}, received ${received} bytes`));
});
server.listen({ fd: 3 });
process.on('SIGTERM', () => server.close(() => process.exit(0)));
