// An independent OIDC provider for interop tests: panva/oidc-provider with one
// confidential client allowed the client-credentials grant, issuing RS256 JWT access
// tokens for the audience "model-api". Usage: node server.mjs PORT [ISSUER]
// (ISSUER defaults to http://127.0.0.1:PORT; e.g. http://127.0.0.1:PORT/ as Auth0 publishes it)
import { generateKeyPairSync } from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const issuer = process.argv[3] ?? `http://127.0.0.1:${port}`;
const SCOPES = ['model:sentiment:predict', 'model:vision:predict'];
const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'model-client',
    client_secret: 'model-client-secret',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope: SCOPES.join(' '),
  }],
  scopes: SCOPES,
  jwks: { keys: [{ ...signingKey, kid: 'interop-rs256', alg: 'RS256', use: 'sig' }] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:mltokens:model-api',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: SCOPES.join(' '),
        audience: 'model-api',
        accessTokenFormat: 'jwt',
        accessTokenTTL: 300,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
});

http.createServer(provider.callback()).listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider ${issuer} ready`);
});
