"""The reviewer's rule checker for Parameter Golf records folders: ``python -m verify PATH``.

API for other tools: ``verify.logparse.parse_log`` / ``parse_log_text`` (-> ``RunSummary``, every score
line in ``scores``), ``verify.schema.validate_submission`` (-> list of errors),
``verify.runner.verify_folder`` (-> list of ``CheckResult``), ``verify.context.load_context`` (the folder
read once: code, logs, the claim and ``match``, the claimed runs), ``verify.checks.legality.code_hits``
(C1-C4 findings of one source), the limits in ``verify.limits``.
"""
