// DEVELOPMENT AND TEST ONLY. NEVER DEPLOY.
//
// A real OAuth 2.0 / OpenID Connect authorization server (the npm package `oidc-provider`)
// set up for fhirwall's end-to-end tests (tests/real_idp.rs). It has static client secrets
// written below, keeps everything in memory, and listens on 127.0.0.1 over plain HTTP.
//
// What it offers:
// - the client_credentials grant, clients authenticated with client_secret_basic (the
//   clients and their allowed SMART scopes are the CLIENTS table below);
// - resource indicators (RFC 8707): a token is issued for one resource; for the resources in
//   IDP_RESOURCES it is a signed JWT access token (RFC 9068, `typ: at+jwt`, RS256) with
//   `aud` = the resource, `scope`, `client_id`, and a SMART `patient` claim when the client is
//   registered with one (`smart_patient`); for IDP_OPAQUE_RESOURCES it is an opaque token
//   (introspection can only answer for those: oidc-provider does not store JWT tokens);
// - token introspection (RFC 7662) at /token/introspection and revocation (RFC 7009) at
//   /token/revocation; the `fhirwall-gateway*` clients are the gateway as a resource server
//   (client_secret_basic, client_secret_post, private_key_jwt with the test key rsa1);
// - discovery at /.well-known/openid-configuration, the public keys at its jwks_uri (/jwks).
//
// Usage:
//   node server.mjs [PORT] [--exit-on-stdin-close]
//       Serves on 127.0.0.1:PORT (PORT from the argument, else IDP_PORT, else 0 = any free
//       port) and prints `READY http://127.0.0.1:PORT` on stdout once it accepts requests.
//       The issuer is exactly that URL. With --exit-on-stdin-close it exits when its standard
//       input closes, so a test harness that dies without cleaning up does not leave it behind.
//   node server.mjs keygen KID [KID...]
//       Prints a private JWKS with one new RSA 2048 key per KID, for IDP_KEYS_FILE.
//
// Environment:
//   IDP_RESOURCES         comma-separated resource URLs given JWT access tokens; the first is
//                         the default when a token request names no resource
//                         (default https://fhirwall.test/fhir)
//   IDP_OPAQUE_RESOURCES  comma-separated resource URLs given opaque access tokens (default none)
//   IDP_KEYS_FILE         a private JWKS ({"keys": [...]}, RSA keys with `kid`); the FIRST key
//                         signs, the others are only published. Key rotation in tests = restart
//                         the server on the same port with another file. Without it, one
//                         throw-away key is made at start.
//   IDP_TOKEN_TTL         access token lifetime in seconds (default 300); a client's
//                         `access_token_ttl` overrides it
//   DEBUG=oidc-provider:* oidc-provider's own debug log

import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

const HOST = '127.0.0.1';

// SMART on FHIR scopes the resource servers know. A token only ever carries scopes from this
// list (oidc-provider drops the others), and a client only those from its own `scope`.
const SMART_SCOPES = [
  'system/Patient.rs',
  'system/Observation.rs',
  'patient/Patient.r',
  'patient/Patient.rs',
  'patient/Observation.rs',
  'user/Patient.r',
  'user/Observation.rs',
  'launch/patient',
];

// The test clients. Secrets are public test values: this server is never deployed.
export const CLIENTS = [
  {
    // A SMART backend service: system-level access, no patient.
    client_id: 'fhirwall-system',
    client_secret: 'system-secret',
    scope: 'system/Patient.rs system/Observation.rs user/Patient.r openid',
  },
  {
    // A client bound to one patient: its tokens carry `patient: "pat-123"`.
    client_id: 'fhirwall-patient',
    client_secret: 'patient-secret',
    scope: 'patient/Patient.r patient/Patient.rs patient/Observation.rs launch/patient openid',
    smart_patient: 'pat-123',
  },
  {
    // Patient-level scopes but no patient registered: its patient/ tokens have no context.
    client_id: 'fhirwall-no-context',
    client_secret: 'no-context-secret',
    scope: 'patient/Patient.r patient/Observation.rs',
  },
  {
    // The gateway itself as a resource server: it only introspects (and revokes through
    // RFC 7009 pass-through), with each client authentication method fhirwall supports.
    client_id: 'fhirwall-gateway',
    client_secret: 'gateway-secret-basic',
    scope: 'openid',
  },
  {
    client_id: 'fhirwall-gateway-post',
    client_secret: 'gateway-secret-post',
    scope: 'openid',
    token_endpoint_auth_method: 'client_secret_post',
  },
  {
    // private_key_jwt with the public half of tests/fixtures/keys/rsa1.key.pem.
    client_id: 'fhirwall-gateway-jwt',
    scope: 'openid',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'RS256',
    jwks: {
      keys: [{
        ...createPublicKey(readFileSync(new URL('../fixtures/keys/rsa1.pub.pem', import.meta.url)))
          .export({ format: 'jwk' }),
        kid: 'gateway-rsa1',
        use: 'sig',
        alg: 'RS256',
      }],
    },
  },
  {
    // Short-lived tokens, for expiry tests.
    client_id: 'fhirwall-short-lived',
    client_secret: 'short-lived-secret',
    scope: 'system/Patient.rs',
    access_token_ttl: 2,
  },
].map((client) => ({
  token_endpoint_auth_method: 'client_secret_basic',
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  ...client,
}));

function main(argv) {
  if (argv[0] === 'keygen') {
    const kids = argv.slice(1);
    if (kids.length === 0) fail('usage: node server.mjs keygen KID [KID...]');
    process.stdout.write(`${JSON.stringify({ keys: kids.map(newSigningKey) }, null, 2)}\n`);
    return;
  }
  const exitOnStdinClose = argv.includes('--exit-on-stdin-close');
  const positional = argv.filter((arg) => !arg.startsWith('--'));
  const port = parsePort(positional[0] ?? process.env.IDP_PORT ?? '0');
  serve(port, exitOnStdinClose);
}

function serve(port, exitOnStdinClose) {
  const resources = list(process.env.IDP_RESOURCES ?? 'https://fhirwall.test/fhir');
  const opaqueResources = list(process.env.IDP_OPAQUE_RESOURCES ?? '');
  if (resources.length === 0) fail('IDP_RESOURCES names no resource');
  const tokenTtl = parseSeconds(process.env.IDP_TOKEN_TTL ?? '300', 'IDP_TOKEN_TTL');
  const jwks = loadKeys(process.env.IDP_KEYS_FILE);
  const signingKid = jwks.keys[0].kid;

  // The issuer must be known before the provider exists, and with port 0 it is only known
  // once the socket is bound: bind first, attach the provider after.
  const server = createServer();
  server.on('error', (err) => fail(`cannot listen on ${HOST}:${port}: ${err.message}`));
  server.listen(port, HOST, () => {
    const issuer = `http://${HOST}:${server.address().port}`;
    const provider = newProvider({
      issuer, resources, opaqueResources, tokenTtl, jwks, signingKid,
    });
    server.on('request', provider.callback());
    process.stdout.write(`READY ${issuer}\n`);
    process.stderr.write(
      `test IdP ${issuer}: JWT resources ${resources.join(' ')}; `
      + `opaque resources ${opaqueResources.join(' ') || '(none)'}; signing kid ${signingKid}; `
      + `published kids ${jwks.keys.map((key) => key.kid).join(' ')}\n`,
    );
  });

  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (exitOnStdinClose) {
    process.stdin.on('end', stop);
    process.stdin.on('close', stop);
    process.stdin.resume();
  }
}

function newProvider({
  issuer, resources, opaqueResources, tokenTtl, jwks, signingKid,
}) {
  const resourceServer = (resource) => {
    if (resources.includes(resource)) {
      return {
        scope: SMART_SCOPES.join(' '),
        audience: resource,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256', kid: signingKid } },
      };
    }
    if (opaqueResources.includes(resource)) {
      return { scope: SMART_SCOPES.join(' '), audience: resource, accessTokenFormat: 'opaque' };
    }
    return undefined;
  };

  const provider = new Provider(issuer, {
    clients: CLIENTS,
    jwks,
    // Only the listed scopes are checked against a client's allowed `scope`.
    scopes: ['openid', ...SMART_SCOPES],
    extraClientMetadata: { properties: ['smart_patient', 'access_token_ttl'] },
    features: {
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      // No end-user flows here: only client_credentials is used.
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => resources[0],
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource) => {
          const info = resourceServer(resource);
          if (!info) throw new errors.InvalidTarget(`unknown resource ${resource}`);
          return info;
        },
      },
    },
    // SMART App Launch: the patient in context travels as a top-level `patient` claim of the
    // access token (and of introspection responses for opaque tokens).
    async extraTokenClaims(ctx, token) {
      const client = ctx?.oidc?.client?.clientId === token.clientId
        ? ctx.oidc.client
        : await provider.Client.find(token.clientId);
      const patient = client?.smart_patient;
      return patient ? { patient } : undefined;
    },
    ttl: {
      ClientCredentials: (ctx, token, client) => client?.access_token_ttl ?? tokenTtl,
      AccessToken: (ctx, token, client) => client?.access_token_ttl ?? tokenTtl,
    },
    // Fixed dev-only cookie keys keep oidc-provider from warning; no flow here sets cookies.
    cookies: { keys: ['fhirwall-test-idp-only'] },
  });

  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`server_error ${ctx.method} ${ctx.path}: ${err.stack}\n`);
  });
  provider.on('grant.error', (ctx, err) => {
    process.stderr.write(`token request refused: ${err.message} (${err.error_description ?? ''})\n`);
  });
  return provider;
}

function loadKeys(path) {
  if (!path) return { keys: [newSigningKey('ephemeral-1')] };
  let jwks;
  try {
    jwks = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    fail(`IDP_KEYS_FILE ${path}: ${err.message}`);
  }
  if (!Array.isArray(jwks?.keys) || jwks.keys.length === 0) {
    fail(`IDP_KEYS_FILE ${path}: expected {"keys": [private JWK, ...]}`);
  }
  jwks.keys.forEach((key, i) => {
    if (key.kty !== 'RSA' || !key.d || typeof key.kid !== 'string' || !key.kid) {
      fail(`IDP_KEYS_FILE ${path}: keys[${i}] must be a private RSA JWK with a kid`);
    }
  });
  return jwks;
}

function newSigningKey(kid) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256',
  };
}

function list(text) {
  return text.split(',').map((item) => item.trim()).filter(Boolean);
}

function parsePort(text) {
  const port = Number(text);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad port ${JSON.stringify(text)}`);
  return port;
}

function parseSeconds(text, name) {
  const seconds = Number(text);
  if (!Number.isInteger(seconds) || seconds <= 0) fail(`${name} must be a positive number of seconds`);
  return seconds;
}

function fail(message) {
  process.stderr.write(`test IdP: ${message}\n`);
  process.exit(2);
}

main(process.argv.slice(2));
