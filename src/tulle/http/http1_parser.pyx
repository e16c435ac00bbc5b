# cython: language_level=3, boundscheck=False, wraparound=False
"""HTTP/1.1 request and response head parsing: llhttp called directly from C.

The compiled peer of http1_parser.py (same API; read that file for the contract). llhttp's
callbacks here are C functions: the URL and header spans are recorded as offsets into the head,
and llhttp is paused at three points per message (its beginning, the end of its head, its end),
so the Python-level calls are one per message head, one per body piece and one per message end.
A head that arrives in one read is decoded straight from that read's buffer; a head split over
reads is the only thing buffered (from its first byte), and decoded once it is complete.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memchr

from tulle.http.codec_callbacks cimport CodecCallbacks, ProtocolCallbacks
from tulle.http.http1 cimport _name_is


cdef extern from "llhttp.h":
    ctypedef struct llhttp_t:
        int32_t error
        const char* reason
        const char* error_pos
        void* data
        uint64_t content_length
        uint8_t type
        uint8_t method
        uint8_t http_major
        uint8_t http_minor
        uint8_t upgrade
        uint16_t flags
        uint16_t status_code

    ctypedef int (*llhttp_data_cb)(llhttp_t*, const char*, size_t) noexcept
    ctypedef int (*llhttp_cb)(llhttp_t*) noexcept

    ctypedef struct llhttp_settings_t:
        llhttp_cb on_message_begin
        llhttp_data_cb on_url
        llhttp_data_cb on_header_field
        llhttp_data_cb on_header_value
        llhttp_cb on_headers_complete
        llhttp_data_cb on_body
        llhttp_cb on_message_complete
        llhttp_cb on_url_complete
        llhttp_cb on_header_field_complete
        llhttp_cb on_header_value_complete

    ctypedef enum llhttp_type_t:
        HTTP_REQUEST
        HTTP_RESPONSE

    ctypedef enum llhttp_method_t:
        HTTP_DELETE

    ctypedef enum llhttp_errno_t:
        HPE_OK
        HPE_PAUSED
        HPE_PAUSED_UPGRADE
        HPE_USER

    enum:
        F_SKIPBODY

    void llhttp_init(llhttp_t* parser, llhttp_type_t type, const llhttp_settings_t* settings)
    void llhttp_settings_init(llhttp_settings_t* settings)
    llhttp_errno_t llhttp_execute(llhttp_t* parser, const char* data, size_t len)
    void llhttp_resume(llhttp_t* parser)
    void llhttp_resume_after_upgrade(llhttp_t* parser)
    int llhttp_should_keep_alive(const llhttp_t* parser)
    const char* llhttp_method_name(llhttp_method_t method)


class ParserError(Exception):
    """The input is not HTTP/1.1 (400), or its head is over a limit (431), or its transfer coding is
    not exactly chunked (501). ``details`` is Envoy's response code details for the reply."""

    def __init__(self, message="", status=400, details="http1.codec_error"):
        super().__init__(message)
        self.status = status
        self.details = details


class ParserUpgrade(Exception):
    """llhttp stopped at an Upgrade/CONNECT: bytes from ``offset`` of the last data fed are not HTTP."""

    def __init__(self, offset):
        super().__init__(offset)
        self.offset = offset


# what llhttp was paused for (_Parser.event)
cdef enum:
    EV_NONE = 0
    EV_BEGIN = 1
    EV_HEADERS = 2
    EV_COMPLETE = 3

cdef llhttp_settings_t _settings
cdef list _method_names = [None] * 64


cdef str _method_name(uint8_t method):
    name = _method_names[method & 63] if method < 64 else None
    if name is None:
        cname = llhttp_method_name(<llhttp_method_t>method)
        name = cname.decode("latin-1")
        if method < 64:
            _method_names[method] = name
    return name


cdef inline bint _is_ws(char c) noexcept:
    return c == b' ' or c == b'\t'


cdef str _lower_name(const char* name, Py_ssize_t length):
    """A header name (an ASCII token: llhttp refuses anything else) as a lower-case str."""
    cdef char buf[64]
    cdef Py_ssize_t i
    cdef char c
    if length > 64:
        return PyUnicode_DecodeLatin1(name, length, NULL).lower()
    for i in range(length):
        c = name[i]
        buf[i] = c + 32 if b'A' <= c <= b'Z' else c
    return PyUnicode_DecodeLatin1(buf, length, NULL)


cdef class _Parser:
    cdef llhttp_t parser
    cdef CodecCallbacks protocol  # the protocol given, or a ProtocolCallbacks around it
    cdef Py_ssize_t max_head_bytes
    # the data being fed (valid during feed_data only) and the stream offset of its first byte
    cdef object data
    cdef const char* buf
    cdef Py_ssize_t buf_len
    cdef long long base
    # the head being parsed: stream offset of its first byte (-1: not in a head), its bytes from
    # earlier reads, and spans [start, end) relative to its first byte: the URL, then name, value...
    cdef long long head_start
    cdef bytes saved
    cdef Py_ssize_t* spans
    cdef Py_ssize_t nspans
    cdef Py_ssize_t cap
    cdef Py_ssize_t cur_start
    cdef Py_ssize_t cur_end
    cdef Py_ssize_t url_start
    cdef Py_ssize_t url_end
    cdef int event
    cdef bint keep_alive
    cdef bint failed
    cdef object error  # raised by a protocol callback inside llhttp_execute

    def __cinit__(self, *args, **kwargs):
        self.spans = NULL
        self.cap = 0
        self.head_start = -1
        self.cur_start = -1

    def __dealloc__(self):
        if self.spans != NULL:
            free(self.spans)
            self.spans = NULL

    @property
    def in_head(self):
        """A head began and was not complete at the end of the last data fed."""
        return self.head_start >= 0

    cdef int _push_span(self) except -1:
        cdef Py_ssize_t* grown
        if self.nspans + 2 > self.cap:
            grown = <Py_ssize_t*>realloc(self.spans, (self.cap * 2 + 32) * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self.spans = grown
            self.cap = self.cap * 2 + 32
        if self.cur_start < 0:
            self.spans[self.nspans] = 0
            self.spans[self.nspans + 1] = 0
        else:
            self.spans[self.nspans] = self.cur_start
            self.spans[self.nspans + 1] = self.cur_end
        self.nspans += 2
        self.cur_start = -1
        return 0

    cdef void _begin(self, Py_ssize_t pos):
        self.head_start = self.base + pos
        self.saved = None
        self.nspans = 0
        self.cur_start = -1
        self.url_start = self.url_end = 0

    cdef int _head_complete(self, const char* head, Py_ssize_t head_len) except -1:
        raise NotImplementedError

    cdef int _head_incomplete(self) except -1:
        raise NotImplementedError

    def feed_data(self, data):
        """Parse ``data`` (bytes), calling the protocol for each message head, body piece and end."""
        cdef llhttp_errno_t err
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t start
        cdef bytes head
        if self.failed:
            raise ParserError("the parser failed on earlier input")
        if type(data) is not bytes:
            data = bytes(data)
        self.data = data
        self.buf = PyBytes_AS_STRING(data)
        self.buf_len = PyBytes_GET_SIZE(data)
        try:
            while True:
                err = llhttp_execute(&self.parser, self.buf + pos, self.buf_len - pos)
                if err == HPE_OK:
                    break
                if self.error is not None:
                    error = self.error
                    self.error = None
                    raise error
                if err == HPE_PAUSED:
                    pos = self.parser.error_pos - self.buf
                    llhttp_resume(&self.parser)
                    if self.event == EV_BEGIN:
                        self._begin(pos)
                    elif self.event == EV_HEADERS:
                        start = <Py_ssize_t>(self.head_start - self.base)
                        if start >= 0:
                            self._head_complete(self.buf + start, pos - start)
                        else:
                            head = self.saved + self.data[:pos]
                            self._head_complete(PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
                    elif self.event == EV_COMPLETE:
                        self.event = EV_NONE
                        self.protocol.on_message_complete(self.keep_alive)
                    continue
                if err == HPE_PAUSED_UPGRADE:
                    pos = self.parser.error_pos - self.buf
                    llhttp_resume_after_upgrade(&self.parser)
                    raise ParserUpgrade(pos)
                reason = self.parser.reason.decode("latin-1") if self.parser.reason != NULL else ""
                raise ParserError(reason)
            if self.head_start >= 0:
                start = <Py_ssize_t>(self.head_start - self.base)
                if start <= 0:
                    self.saved = data if self.saved is None else self.saved + data
                else:
                    self.saved = data[start:]
                self._head_incomplete()
        except ParserUpgrade:
            raise
        except BaseException:
            self.failed = True
            raise
        finally:
            self.base += self.buf_len
            self.data = None
            self.buf = NULL
            self.buf_len = 0


cdef int _cb_message_begin(llhttp_t* parser) noexcept:
    (<_Parser>parser.data).event = EV_BEGIN
    return HPE_PAUSED


cdef int _cb_span(llhttp_t* parser, const char* at, size_t length) noexcept:
    cdef _Parser self = <_Parser>parser.data
    cdef Py_ssize_t offset
    if self.head_start < 0:
        return 0  # trailers (after a chunked body) are not reported
    offset = <Py_ssize_t>(self.base + (at - self.buf) - self.head_start)
    if self.cur_start < 0:
        self.cur_start = offset
    self.cur_end = offset + <Py_ssize_t>length
    return 0


cdef int _cb_url_complete(llhttp_t* parser) noexcept:
    cdef _Parser self = <_Parser>parser.data
    if self.cur_start >= 0:
        self.url_start = self.cur_start
        self.url_end = self.cur_end
    self.cur_start = -1
    return 0


cdef int _cb_header_complete(llhttp_t* parser) noexcept:
    cdef _Parser self = <_Parser>parser.data
    if self.head_start < 0:
        return 0
    try:
        self._push_span()
    except MemoryError as exc:
        self.error = exc
        return HPE_USER
    return 0


cdef int _cb_headers_complete(llhttp_t* parser) noexcept:
    (<_Parser>parser.data).event = EV_HEADERS
    return HPE_PAUSED


cdef int _cb_body(llhttp_t* parser, const char* at, size_t length) noexcept:
    cdef _Parser self = <_Parser>parser.data
    if at == self.buf and <Py_ssize_t>length == self.buf_len:
        body = self.data
    else:
        body = PyBytes_FromStringAndSize(at, length)
    try:
        self.protocol.on_body(body)
    except BaseException as exc:
        self.error = exc
        return HPE_USER
    return 0


cdef int _cb_message_complete(llhttp_t* parser) noexcept:
    cdef _Parser self = <_Parser>parser.data
    self.keep_alive = llhttp_should_keep_alive(parser)
    self.event = EV_COMPLETE
    return HPE_PAUSED


llhttp_settings_init(&_settings)
_settings.on_message_begin = _cb_message_begin
_settings.on_url = _cb_span
_settings.on_url_complete = _cb_url_complete
_settings.on_header_field = _cb_span
_settings.on_header_field_complete = _cb_header_complete
_settings.on_header_value = _cb_span
_settings.on_header_value_complete = _cb_header_complete
_settings.on_headers_complete = _cb_headers_complete
_settings.on_body = _cb_body
_settings.on_message_complete = _cb_message_complete


cdef class RequestParser(_Parser):
    """Parses requests; calls ``protocol.on_request_head(method, target, http10, headers)``,
    ``protocol.on_body(data)`` and ``protocol.on_message_complete(keep_alive)``."""

    cdef Py_ssize_t max_headers
    # bytes of the reads that ended inside the current head (the connection manager's count)
    cdef Py_ssize_t head_bytes

    def __init__(self, protocol, Py_ssize_t max_head_bytes, Py_ssize_t max_headers):
        self.protocol = protocol if isinstance(protocol, CodecCallbacks) else ProtocolCallbacks(protocol)
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        llhttp_init(&self.parser, HTTP_REQUEST, &_settings)
        self.parser.data = <void*>self

    cdef void _begin(self, Py_ssize_t pos):
        _Parser._begin(self, pos)
        self.head_bytes = 0

    cdef int _head_incomplete(self) except -1:
        self.head_bytes += self.buf_len
        if self.head_bytes > self.max_head_bytes:
            raise ParserError("request headers too large", 431, "http1.headers_too_large")
        return 0

    cdef int _head_complete(self, const char* head, Py_ssize_t head_len) except -1:
        cdef Py_ssize_t i, total, name_len, value_len
        cdef Py_ssize_t* spans = self.spans
        cdef Py_ssize_t count = self.nspans // 4
        cdef const char* value
        cdef llhttp_t* parser = &self.parser
        self.head_start = -1
        self.saved = None
        if count > self.max_headers:
            raise ParserError("too many request headers", 431, "http1.too_many_headers")
        total = self.url_end - self.url_start
        for i in range(0, self.nspans, 2):
            total += spans[i + 1] - spans[i]
        if total > self.max_head_bytes:
            raise ParserError("request headers too large", 431, "http1.headers_too_large")
        headers = []
        for i in range(0, count * 4, 4):
            name_len = spans[i + 1] - spans[i]
            value = head + spans[i + 2]
            value_len = spans[i + 3] - spans[i + 2]
            if _name_is(head + spans[i], name_len, "transfer-encoding", 17):
                # Envoy's codec answers 501 to any transfer coding but exactly "chunked"
                while value_len and _is_ws(value[value_len - 1]):
                    value_len -= 1
                if not _name_is(value, value_len, "chunked", 7):
                    raise ParserError("unsupported transfer coding", 501, "http1.invalid_transfer_encoding")
                value_len = spans[i + 3] - spans[i + 2]
            headers.append((_lower_name(head + spans[i], name_len), PyUnicode_DecodeLatin1(value, value_len, NULL)))
        if parser.upgrade:
            parser.flags |= F_SKIPBODY  # as httptools: what follows an Upgrade/CONNECT head is not HTTP
        method = _method_name(parser.method)
        target = PyUnicode_DecodeLatin1(head + self.url_start, self.url_end - self.url_start, NULL)
        http10 = not (parser.http_major == 1 and parser.http_minor == 1)
        self.protocol.on_request_head(method, target, http10, headers)
        return 0


cdef class ResponseParser(_Parser):
    """Parses responses; calls ``protocol.on_response_head(status, http10, block, content_length,
    transfer_encoding, keep_alive)``, ``protocol.on_body(data)`` and
    ``protocol.on_message_complete(keep_alive)``."""

    cdef bint no_body

    def __init__(self, protocol, Py_ssize_t max_head_bytes):
        self.protocol = protocol if isinstance(protocol, CodecCallbacks) else ProtocolCallbacks(protocol)
        self.max_head_bytes = max_head_bytes
        llhttp_init(&self.parser, HTTP_RESPONSE, &_settings)
        self.parser.data = <void*>self

    def expect_no_body(self):
        """The next final (non-1xx) response answers HEAD: it ends with its head."""
        self.no_body = True

    cdef int _head_incomplete(self) except -1:
        if self.base + self.buf_len - self.head_start > self.max_head_bytes:
            raise ParserError("response headers too large", 431, "http1.headers_too_large")
        return 0

    cdef int _head_complete(self, const char* head, Py_ssize_t head_len) except -1:
        cdef Py_ssize_t i, block_start, block_end, value_len
        cdef Py_ssize_t* spans = self.spans
        cdef const char* value
        cdef const char* line_end
        cdef int status
        cdef llhttp_t* parser = &self.parser
        self.head_start = -1
        self.saved = None
        if head_len > self.max_head_bytes:
            raise ParserError("response headers too large", 431, "http1.headers_too_large")
        status = parser.status_code
        # llhttp (strict) accepts only CRLF line ends and no obs-fold: the head is
        # status-line CRLF *(header-line CRLF) CRLF, and the block is what lies between.
        line_end = <const char*>memchr(head, b'\n', head_len)
        block_start = (line_end - head) - 1
        block_end = head_len - 4
        if block_end < block_start:
            block_end = block_start
        content_length = None
        transfer_encoding = None
        for i in range(0, self.nspans - 3, 4):
            value = head + spans[i + 2]
            value_len = spans[i + 3] - spans[i + 2]
            if content_length is None and _name_is(head + spans[i], spans[i + 1] - spans[i], "content-length", 14):
                while value_len and _is_ws(value[value_len - 1]):
                    value_len -= 1
                content_length = PyUnicode_DecodeLatin1(value, value_len, NULL)
            elif transfer_encoding is None and _name_is(head + spans[i], spans[i + 1] - spans[i],
                                                        "transfer-encoding", 17):
                while value_len and _is_ws(value[value_len - 1]):
                    value_len -= 1
                transfer_encoding = PyUnicode_DecodeLatin1(value, value_len, NULL)
        if self.no_body and not (100 <= status < 200):
            self.no_body = False
            parser.flags |= F_SKIPBODY
        http10 = not (parser.http_major == 1 and parser.http_minor == 1)
        block = PyBytes_FromStringAndSize(head + block_start, block_end - block_start)
        keep_alive = llhttp_should_keep_alive(parser) != 0
        self.protocol.on_response_head(status, http10, block, content_length, transfer_encoding, keep_alive)
        return 0
