// fastify, unchanged apart from taking its listener at descriptor 3;
// `fastify.close()` on SIGTERM.
'use strict';
const fastify = require('fastify')();
fastify.addContentTypeParser('*', { parseAs: 'buffer' }, (req, body, done) => done(null, body));
fastify.all('/*', async (req) => {
  const received = req.body ? req.body.length : 0;
  return `Process handled by pid: ${process.pid}, received ${received} bytes`;
});
fastify.ready().then(() => fastify.server.listen({ fd: 3 }));
process.on('SIGTERM', () => fastify.close().then(() => process.exit(0)));
