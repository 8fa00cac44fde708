// Decodes MAVLink packets with node-mavlink (an implementation we did not
// write), for test_autopilot.py.
//
//   node mavlink_decode.js NODE_MODULES stdin
//   node mavlink_decode.js NODE_MODULES udp COUNT TIMEOUT_MS
//
// stdin: the bytes on standard input. udp: listens on 127.0.0.1 (a port of
// the system's choosing, printed first as {"port": N}) until COUNT GPS_INPUT
// packets have come (HEARTBEATs come too, and are printed, not counted) or
// TIMEOUT_MS have passed.
//
// Prints one JSON line per packet whose CRC node-mavlink accepted: the
// header, the message's fields by their common.xml names, and whether
// node-mavlink's own serializer, given those fields, writes the very same
// bytes. Last, {"summary": ...} with the splitter's counts of valid,
// invalid (CRC errors) and unknown packets.
'use strict';

const path = require('path');
const dgram = require('dgram');
const { PassThrough } = require('stream');

const modules = process.argv[2];
const mode = process.argv[3];
const mav = require(path.join(modules, 'node-mavlink'));
const REGISTRY = { ...mav.minimal.REGISTRY, ...mav.common.REGISTRY };

const input = new PassThrough();
let crcErrors = 0;
const splitter = new mav.MavLinkPacketSplitter({}, { onCrcError: () => crcErrors++ });
const reader = input.pipe(splitter).pipe(new mav.MavLinkPacketParser());
let count = 0;
let want = Infinity;

function plain(v) {
  return typeof v === 'bigint' ? v.toString() : v;
}

reader.on('data', (packet) => {
  const h = packet.header;
  const out = {
    msgid: h.msgid,
    magic: h.magic,
    payload_length: h.payloadLength,
    incompat_flags: h.incompatibilityFlags,
    compat_flags: h.compatibilityFlags,
    seq: h.seq,
    sysid: h.sysid,
    compid: h.compid,
    crc: packet.crc,
  };
  const clazz = REGISTRY[h.msgid];
  if (clazz) {
    const data = packet.protocol.data(packet.payload, clazz);
    out.name = clazz.MSG_NAME;
    out.fields = {};
    for (const f of clazz.FIELDS)
      out.fields[f.source] = plain(data[f.name]);
    const again = new mav.MavLinkProtocolV2(h.sysid, h.compid).serialize(data, h.seq);
    out.reencoded_equal = Buffer.compare(again, packet.buffer) === 0;
  }
  console.log(JSON.stringify(out));
  if (h.msgid === 232 && ++count >= want)
    finish();
});

let finished = false;
function finish() {
  if (finished)
    return;
  finished = true;
  console.log(JSON.stringify({
    summary: true,
    // The splitter's getters are named unevenly across versions: read the
    // counters themselves.
    valid: splitter._validPackagesCount,
    invalid: splitter._invalidPackagesCount,
    unknown: splitter._unknownPackagesCount,
    crc_errors: crcErrors,
  }));
  process.exit(0);
}

if (mode === 'stdin') {
  process.stdin.on('data', (d) => input.write(d));
  process.stdin.on('end', () => setImmediate(finish));
} else if (mode === 'udp') {
  want = Number(process.argv[4]);
  const sock = dgram.createSocket('udp4');
  sock.on('message', (d) => input.write(d));
  sock.bind(0, '127.0.0.1', () => {
    console.log(JSON.stringify({ port: sock.address().port }));
  });
  setTimeout(finish, Number(process.argv[5]));
} else {
  console.error('usage: mavlink_decode.js NODE_MODULES stdin|udp COUNT TIMEOUT_MS');
  process.exit(2);
}
