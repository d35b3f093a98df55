// A real OpenID Connect provider (node-oidc-provider) on loopback for tests/test_oauth.py:
// client-credentials grants whose access tokens are JWTs (ES256, audience "postern", scope
// "mail") carrying the client's mail address in an "email" claim; clients ending in "-opaque"
// get opaque tokens instead, checked at the introspection endpoint (RFC 7662).
// Usage: node provider.mjs PORT CERT KEY JWKS.json CLIENTS.json
import fs from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';

const [port, certFile, keyFile, jwksFile, clientsFile] = process.argv.slice(2);
const jwks = JSON.parse(fs.readFileSync(jwksFile, 'utf8'));
const clients = JSON.parse(fs.readFileSync(clientsFile, 'utf8'));
const issuer = `https://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  jwks,
  clients: clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: c.grant_types || ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
    id_token_signed_response_alg: 'ES256',
    scope: 'mail',
  })),
  scopes: ['mail'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:postern',
      useGrantedResource: () => true,
      // clients whose id ends in "-opaque" get opaque tokens (checked by introspection)
      getResourceServerInfo: (ctx, resource, client) => ({
        scope: 'mail',
        audience: 'postern',
        accessTokenTTL: 300,
        accessTokenFormat: client.clientId.endsWith('-opaque') ? 'opaque' : 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
  extraTokenClaims: async (ctx, token) => {
    const c = clients.find((x) => x.client_id === token.clientId);
    return c ? { email: c.email } : undefined;
  },
});

https
  .createServer({ cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) }, provider.callback())
  .listen(Number(port), '127.0.0.1', () => console.log('ready'));
