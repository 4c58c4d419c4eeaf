"""ControlNet image prompts: PyraCanny, CPDS and depth (preprocessors, models, application)."""
