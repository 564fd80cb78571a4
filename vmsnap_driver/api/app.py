"""The WSGI application: routing, microversions and faults.

Only the part of the Compute API that ``openstack server show`` and
``openstack server image create`` use is served.  Every error, including an
unexpected one, becomes a Nova-shaped JSON fault: a malformed request never
takes the service down.
"""

import json
import re
from typing import Any, Optional

from oslo_context import context as oslo_context
from oslo_log import log as logging
import webob
import webob.dec

from vmsnap_driver.api import faults
from vmsnap_driver.api import microversion
from vmsnap_driver.api import servers

LOG = logging.getLogger(__name__)

# Nova's default [wsgi] max_request_body_size.
MAX_REQUEST_BODY = 114688

SERVER = r'(?P<server_id>[^/]+)'
# (method, path regex, handler name)
ROUTES = [
    ('GET', r'/v2\.1/servers', 'index'),
    ('GET', r'/v2\.1/servers/detail', 'detail'),
    ('GET', r'/v2\.1/servers/' + SERVER, 'show'),
    ('POST', r'/v2\.1/servers/' + SERVER + r'/action', 'action'),
]
COMPILED = [(method, re.compile('^' + path + '/?$'), name)
            for method, path, name in ROUTES]


def _json(body: dict, status: int = 200) -> webob.Response:
    response = webob.Response(status=status, content_type='application/json',
                              charset='UTF-8')
    response.text = json.dumps(body)
    return response


class ComputeAPI:
    """The application.

    :param trusted: no authentication runs in front of it (``auth_strategy
        = noauth``): every request is the admin's.
    """

    def __init__(self, host: Any, manager: Any, images: Any,
                 enforcer: Any, trusted: bool = False,
                 state_path: Optional[str] = None) -> None:
        self._servers = servers.Servers(host, manager, images, enforcer,
                                        state_path)
        self._trusted = trusted

    @webob.dec.wsgify
    def __call__(self, req: webob.Request) -> webob.Response:
        base = req.host_url
        path = req.path_info.rstrip('/') or '/'
        if path == '/':
            return _json({'versions': [
                microversion.version_document(base)]}, status=200)
        try:
            version = microversion.negotiate(req.headers)
        except microversion.NotAcceptable as e:
            return faults.Fault(406, str(e)).response()
        if _too_large(req):
            return faults.Fault(413, 'Request body is larger than %d bytes.'
                                % MAX_REQUEST_BODY).response()
        try:
            if path == '/v2.1':
                response = _json(
                    {'version': microversion.version_document(base)})
            else:
                response = self._dispatch(req, path, base, version)
        except faults.Fault as fault:
            response = fault.response()
        except Exception:
            LOG.exception('Unexpected error answering %s %s', req.method,
                          req.path)
            response = faults.Fault(
                500, 'Unexpected error; see the vmsnap-compute log.'
            ).response()
        response.headers.update(microversion.response_headers(version))
        return response

    def _dispatch(self, req: webob.Request, path: str, base: str,
                  version: tuple) -> webob.Response:
        allowed = []
        for method, regex, name in COMPILED:
            match = regex.match(path)
            if not match:
                continue
            if method != req.method:
                allowed.append(method)
                continue
            handler = getattr(self._servers, name)
            result = handler(req, base, version, context=self._context(req),
                             **match.groupdict())
            return result if isinstance(result, webob.Response) else (
                _json(result))
        if allowed:
            raise faults.Fault(405, 'The method %s is not allowed for %s.'
                               % (req.method, req.path),
                               headers={'Allow': ', '.join(allowed)})
        raise faults.Fault(404, 'The resource could not be found.')

    def _context(self, req: webob.Request) -> oslo_context.RequestContext:
        if self._trusted:
            return oslo_context.RequestContext(is_admin=True,
                                               roles=['admin'])
        context = oslo_context.RequestContext.from_environ(req.environ)
        # The user's token, for the calls made on the user's behalf.
        context.user_auth_plugin = req.environ.get('keystone.token_auth')
        return context


def _too_large(req: webob.Request) -> bool:
    """A body over the limit, declared or not, is never read whole."""
    if req.content_length is not None:
        return req.content_length > MAX_REQUEST_BODY
    if req.method not in ('POST', 'PUT'):
        return False
    body = req.body_file.read(MAX_REQUEST_BODY + 1)
    req.body = body
    return len(body) > MAX_REQUEST_BODY


class VersionsWithoutAuth:
    """Serve version discovery unauthenticated, everything else through auth.

    Clients discover versions before they have a token, so Nova serves
    ``/`` and ``/v2.1/`` outside its auth pipeline; so do we.
    """

    def __init__(self, application: Any, authenticated: Any) -> None:
        self._application = application
        self._authenticated = authenticated

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ.get('PATH_INFO', '').rstrip('/')
        if path in ('', '/v2.1'):
            return self._application(environ, start_response)
        return self._authenticated(environ, start_response)
