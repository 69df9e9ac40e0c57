// The OpenID Provider the sign-in tests run against: node's `oidc-provider` (a certified
// OpenID Provider implementation) over plain HTTP on loopback, with its own small login,
// consent and logout pages (no external resources, so a headless browser fetches nothing
// from outside), and the test users of the sign-in design.
//
//   node provider.mjs [--port N] [--config JSON] [--exit-with-stdin]
//
// The port defaults to 0 (the kernel picks one). The first line on stdout is
// `ISSUER http://127.0.0.1:PORT`; each request is logged to stderr on one line. The config
// (the --config argument, else the OIDC_PROVIDER_CONFIG environment variable, else the
// defaults below) is JSON:
//
//   {
//     "clients": [{ "client_id": "...", "client_secret": "...", "redirect_uris": [...],
//                   "post_logout_redirect_uris": [...], ...any other client metadata }],
//     "users": [{ "login": "alice", "password": "...", "claims": { "sub": "alice", ... } }],
//     "ttl": { "IdToken": 5, "AccessToken": 5, "RefreshToken": 3600, "Session": ..., ... }
//   }
//
// Client metadata not given defaults to the sign-in design's: grant_types
// [authorization_code, refresh_token], response_types [code], client_secret_basic.
// Refresh tokens: oidc-provider issues one only when the authorization request asks for
// `offline_access` *with* `prompt=consent` (it drops offline_access otherwise), the client
// may use the refresh_token grant, and the user consents to offline_access.
// With --exit-with-stdin the process exits when its stdin closes (its parent died).

import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

function arg(name) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
}

const port = Number(arg('--port') ?? 0);
const config = JSON.parse(arg('--config') ?? process.env.OIDC_PROVIDER_CONFIG ?? '{}');

const users = config.users ?? [
  {
    login: 'alice',
    password: 'alice-password',
    claims: {
      sub: 'alice',
      email: 'alice@example.com',
      email_verified: true,
      name: 'Alice Example',
      groups: ['admins', 'staff'],
    },
  },
  {
    login: 'bob',
    password: 'bob-password',
    claims: { sub: 'bob', email: 'bob@example.com', name: 'Bob Example', groups: ['staff'] },
  },
];

const clients = (config.clients ?? [
  {
    client_id: 'portcullis',
    client_secret: 'portcullis-secret',
    redirect_uris: ['https://authenticate.test/.portcullis/callback'],
    post_logout_redirect_uris: ['https://authenticate.test/.portcullis/signed_out'],
  },
]).map((c) => ({
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  ...c,
}));

// Fresh signing keys each run (never the library's built-in development key).
function jwk(type, options, alg) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid: `${alg.toLowerCase()}-${randomUUID()}` };
}
const jwks = {
  keys: [jwk('rsa', { modulusLength: 2048 }, 'RS256'), jwk('ec', { namedCurve: 'P-256' }, 'ES256')],
};

const ttl = {
  AccessToken: 3600,
  AuthorizationCode: 60,
  IdToken: 3600,
  RefreshToken: 14 * 24 * 3600,
  Interaction: 3600,
  Session: 14 * 24 * 3600,
  Grant: 14 * 24 * 3600,
  ...config.ttl,
};

const html = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>${html(title)}</title>
<style>body{font-family:sans-serif;margin:2em auto;max-width:24em}input,button{display:block;margin:.5em 0;width:100%;font-size:1em}.error{color:#b00}</style>
</head>
<body>
<h1>${html(title)}</h1>
${body}
</body>
</html>`;
}

function loginPage(uid, params, error) {
  return page('Sign-in', `${error ? `<p class="error" id="error">${html(error)}</p>` : ''}
<p>Client <code>${html(params.client_id)}</code> asks you to sign in.</p>
<form id="login" method="post" action="/interaction/${html(uid)}/login" autocomplete="off">
  <input type="hidden" name="uid" value="${html(uid)}">
  <label>Login <input id="username" type="text" name="login" required autofocus value="${html(params.login_hint ?? '')}"></label>
  <label>Password <input id="password" type="password" name="password" required></label>
  <button id="submit" type="submit">Sign in</button>
</form>
<p><a id="abort" href="/interaction/${html(uid)}/abort">Cancel</a></p>`);
}

function consentPage(uid, params, details) {
  const scopes = (details.missingOIDCScope ?? []).map((s) => `<li>${html(s)}</li>`).join('');
  const claims = (details.missingOIDCClaims ?? []).map((s) => `<li>${html(s)}</li>`).join('');
  return page('Authorize', `<p>Client <code>${html(params.client_id)}</code> asks for:</p>
<ul id="scopes">${scopes}</ul>
${claims ? `<p>Claims:</p><ul id="claims">${claims}</ul>` : ''}
<form id="consent" method="post" action="/interaction/${html(uid)}/confirm" autocomplete="off">
  <input type="hidden" name="uid" value="${html(uid)}">
  <button id="allow" type="submit" name="consent" value="yes">Allow</button>
</form>
<p><a id="abort" href="/interaction/${html(uid)}/abort">Deny</a></p>`);
}

const server = createServer();
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const oidc = new Provider(issuer, {
    clients,
    jwks,
    ttl,
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    // The ID token carries the scopes' claims even when an access token is issued too.
    conformIdTokenClaims: false,
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'groups'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    responseTypes: ['code'],
    // PKCE (S256) on every authorization request unless the config says `"pkceRequired": false`.
    pkce: { required: () => config.pkceRequired ?? true },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          // `form` is `<form id="op.logoutForm" method="post" action=".../session/end/confirm">
          // <input type="hidden" name="xsrf" value="..."/></form>`; the buttons name it.
          ctx.body = page('Sign out', `<p>Do you want to sign out from ${html(ctx.host)}?</p>
${form}
<button id="logout-yes" type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button id="logout-no" type="submit" form="op.logoutForm">No, stay signed in</button>`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.body = page('Signed out', '<p id="signed-out">You are signed out.</p>');
        },
      },
      revocation: { enabled: true },
      introspection: { enabled: true },
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page(
        'Error',
        Object.entries(out).map(([k, v]) => `<pre id="${html(k)}">${html(k)}: ${html(v)}</pre>`).join(''),
      );
    },
    async findAccount(ctx, sub) {
      const user = users.find((u) => u.claims.sub === sub);
      if (!user) return undefined;
      return { accountId: sub, claims: async () => ({ ...user.claims }) };
    },
  });
  const callback = oidc.callback();

  async function body(req) {
    let data = '';
    for await (const chunk of req) data += chunk;
    return new URLSearchParams(data);
  }

  function send(res, status, text) {
    res.writeHead(status, {
      'content-type': 'text/html; charset=utf-8',
      'cache-control': 'no-store',
    });
    res.end(text);
  }

  async function interaction(req, res, uid, action) {
    const details = await oidc.interactionDetails(req, res);
    if (details.uid !== uid) throw new Error('interaction uid mismatch');
    const { prompt, params } = details;
    if (action === 'abort') {
      return oidc.interactionFinished(req, res, {
        error: 'access_denied',
        error_description: 'End-User aborted interaction',
      }, { mergeWithLastSubmission: false });
    }
    if (req.method === 'GET' && action === undefined) {
      if (prompt.name === 'login') return send(res, 200, loginPage(uid, params));
      if (prompt.name === 'consent') return send(res, 200, consentPage(uid, params, prompt.details));
      return send(res, 501, page('Error', `<p>prompt ${html(prompt.name)} is not supported</p>`));
    }
    if (req.method === 'POST' && action === 'login' && prompt.name === 'login') {
      const form = await body(req);
      const user = users.find((u) => u.login === form.get('login') && u.password === form.get('password'));
      if (!user) return send(res, 401, loginPage(uid, params, 'Invalid login or password.'));
      return oidc.interactionFinished(req, res, { login: { accountId: user.claims.sub } }, {
        mergeWithLastSubmission: false,
      });
    }
    if (req.method === 'POST' && action === 'confirm' && prompt.name === 'consent') {
      await body(req);
      const grant = details.grantId
        ? await oidc.Grant.find(details.grantId)
        : new oidc.Grant({ accountId: details.session.accountId, clientId: params.client_id });
      if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
      if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
      if (prompt.details.missingResourceScopes) {
        for (const [indicator, scope] of Object.entries(prompt.details.missingResourceScopes)) {
          grant.addResourceScope(indicator, scope.join(' '));
        }
      }
      const grantId = await grant.save();
      return oidc.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    return send(res, 400, page('Error', `<p>unexpected ${html(req.method)} for prompt ${html(prompt.name)}</p>`));
  }

  server.on('request', (req, res) => {
    const started = process.hrtime.bigint();
    res.on('finish', () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      const where = res.getHeader('location');
      process.stderr.write(`oidc-provider: ${req.method} ${req.url.slice(0, 160)} -> ${res.statusCode}`
        + `${where ? ` ${String(where).slice(0, 160)}` : ''} (${ms.toFixed(1)} ms)\n`);
    });
    const m = /^\/interaction\/([^/?]+)(?:\/(login|confirm|abort))?(?:\?.*)?$/.exec(req.url);
    if (m) {
      interaction(req, res, m[1], m[2]).catch((err) => {
        process.stderr.write(`oidc-provider: interaction error: ${err}\n`);
        if (!res.headersSent) send(res, 400, page('Error', `<p id="error">${html(err.message)}</p>`));
      });
      return;
    }
    callback(req, res);
  });

  process.stdout.write(`ISSUER ${issuer}\n`);
});

server.on('error', (err) => {
  process.stderr.write(`oidc-provider: ${err}\n`);
  process.exit(1);
});

if (process.argv.includes('--exit-with-stdin')) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
