# A tiny WSGI app for the quickstart: says which worker answered and with which greeting.
import os


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    greeting = os.environ.get("GREETING", "hello")
    return [("%s from worker %d\n" % (greeting, os.getpid())).encode()]
