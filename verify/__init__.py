"""The reviewer's rule checker for Parameter Golf records folders: ``python -m verify PATH``.

API for other tools: ``verify.logparse.parse_log`` / ``parse_log_text`` (-> ``RunSummary``),
``verify.schema.validate_submission`` (-> list of errors), ``verify.runner.verify_folder``
(-> list of ``CheckResult``), the limits in ``verify.limits``.
"""
