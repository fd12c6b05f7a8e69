from django.http import JsonResponse

ERROR_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


class ApiErrorShapeMiddleware:
    """Under /api/, the few answers Django or the router produce outside our handlers
    (an unknown path, a wrong method) get the API's one error shape too."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            request.path.startswith("/api/")
            and response.status_code in ERROR_CODES
            and "json" not in response.get("Content-Type", "")
        ):
            messages = {404: "Not found.", 405: f"Method {request.method} not allowed.", 400: "Bad request."}
            shaped = JsonResponse(
                {
                    "error": {
                        "code": ERROR_CODES[response.status_code],
                        "message": messages[response.status_code],
                        "field": None,
                    }
                },
                status=response.status_code,
            )
            if response.has_header("Allow"):
                shaped["Allow"] = response["Allow"]
            return shaped
        return response
