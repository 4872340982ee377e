# A Rack application for puma: answers with its pid and the size of the
# body it read.
run lambda { |env|
  body = env['rack.input'].read
  [200, { 'content-type' => 'text/plain' }, ["Process handled by pid: #{Process.pid}, received #{body.bytesize} bytes"]]
}
