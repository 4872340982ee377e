// The baseline for benches/node_cluster.rs: the Node.js cluster tutorial's
// server, as the tutorial writes it (the primary forks one worker per CPU,
// re-forks each one that dies; round-robin accept in the primary), with the
// same request handler, CPU loop and crashes as examples/node/server.js.
//
//   PORT=8080 WORKERS=4 WORK=500000 CRASH_AFTER_MS=4000 node cluster.js

'use strict';
const cluster = require('cluster');
const http = require('http');

const WORKERS = Number(process.env.WORKERS || require('os').cpus().length);
const WORK = Number(process.env.WORK || 0);
const crashAfter = Number(process.env.CRASH_AFTER_MS || 0);

if (cluster.isPrimary) {
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  cluster.on('exit', (worker) => {
    console.log(`worker ${worker.process.pid} died`);
    cluster.fork();
  });
  process.on('SIGTERM', () => {
    cluster.removeAllListeners('exit');
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      let x = 0;
      for (let i = 0; i < WORK; i++) x += i % 7;
      res.end(`Process handled by pid: ${process.pid}`);
    });
  }).listen(Number(process.env.PORT || 8080), '127.0.0.1', () => console.log(`worker ${process.pid} listening`));
  if (crashAfter > 0) {
    setTimeout(() => process.exit(1), crashAfter / 2 + Math.random() * crashAfter / 2);
  }
}
