// koa, unchanged apart from taking its listener at descriptor 3;
// `server.close()` on SIGTERM.
'use strict';
const Koa = require('koa');
const app = new Koa();
app.use(async (ctx) => {
  let received = 0;
  for await (const chunk of ctx.req) received += chunk.length;
  ctx.body = `Process handled by pid: ${process.pid}, received ${received} bytes`;
});
const server = app.listen({ fd: 3 });
process.on('SIGTERM', () => server.close(() => process.exit(0)));
