"""Nova-shaped error responses: ``{"itemNotFound": {"code": 404, ...}}``."""

import json

import webob

# Nova names each fault body after its status code.
FAULT_NAMES = {
    400: 'badRequest',
    401: 'unauthorized',
    403: 'forbidden',
    404: 'itemNotFound',
    405: 'badMethod',
    406: 'notAcceptable',
    409: 'conflictingRequest',
    413: 'overLimit',
    415: 'badMediaType',
    503: 'serviceUnavailable',
}


class Fault(Exception):
    """Raised by handlers; turned into a response by the application."""

    def __init__(self, code: int, message: str, headers: dict = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> webob.Response:
        name = FAULT_NAMES.get(self.code, 'computeFault')
        body = {name: {'code': self.code, 'message': self.message}}
        response = webob.Response(status=self.code,
                                  content_type='application/json',
                                  charset='UTF-8')
        response.text = json.dumps(body)
        response.headers.update(self.headers)
        return response
