// Reads {"documents": {name: text}, "yaml": {name: text}} on stdin. Parses every document with
// the official AsyncAPI parser and loads every YAML text with js-yaml (the parser's own YAML
// reader); prints {"documents": {name: [diagnostic]}, "yaml": {name: value}} on stdout.
// Usage: node parse.mjs PARSER_DIR (the directory `npm install --prefix` filled).
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(path.join(process.argv[2], 'node_modules', 'x.js'));
const { Parser } = require('@asyncapi/parser');
const yaml = require('js-yaml');
const SEVERITIES = ['error', 'warning', 'information', 'hint'];

let input = '';
for await (const chunk of process.stdin) input += chunk;
const request = JSON.parse(input);
const parser = new Parser();
const out = { documents: {}, yaml: {} };
for (const [name, text] of Object.entries(request.documents || {})) {
  const { diagnostics } = await parser.parse(text);
  out.documents[name] = diagnostics.map((d) => ({
    severity: SEVERITIES[d.severity] ?? String(d.severity),
    code: String(d.code),
    message: d.message,
    path: d.path.join('/'),
  }));
}
for (const [name, text] of Object.entries(request.yaml || {})) {
  out.yaml[name] = yaml.load(text);
}
process.stdout.write(JSON.stringify(out));
