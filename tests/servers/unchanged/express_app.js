// express, unchanged apart from taking its listener at descriptor 3;
// `server.close()` on SIGTERM, as express documents.
'use strict';
const express = require('express');
const app = express();
app.use((req, res) => {
  let received = 0;
  req.on('data', (chunk) => { received += chunk.length; });
  req.on('end', () => res.send(`Process handled by pid: ${process.pid}, received ${received} bytes`));
});
const server = app.listen({ fd: 3 });
process.on('SIGTERM', () => server.close(() => process.exit(0)));
