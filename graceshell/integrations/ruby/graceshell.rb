# frozen_string_literal: true

# What graceshell's Ruby integrations share: the job ledger and the shutdown
# notice, the same files graceshell/jobs.py and graceshell/shutdown.py use.
# The standard library only (json), so it loads in any Ruby process.
#
# Ledger entry: one JSON object per job in flight, in $GRACESHELL_JOBS_DIR,
# named "<pid>-<job id, characters outside [A-Za-z0-9._-] as _>.json",
# written as a dot-file first and renamed into place:
#
#   {"id": "...", "name": "HardWorker", "pid": 1234, "started_at": 1764552000.5,
#    "framework": "sidekiq", "queue": "default", ...}
#
# removed when the job ends (finished or failed: the framework owns its
# retries). A job cut short by a cold shutdown keeps its entry, with
# "interrupted": true and "requeued": true when it is back in its queue, so
# graceshell's exit report names it.
require "json"

module Graceshell
  JOBS_DIR_ENV = "GRACESHELL_JOBS_DIR"
  SHUTDOWN_FILE_ENV = "GRACESHELL_SHUTDOWN_FILE"
  BUDGET_ENV = "GRACESHELL_BUDGET_S"
  MAX_NOTICE = 64 * 1024 # bytes, as graceshell.shutdown reads the notice

  module_function

  def active?
    !ENV[SHUTDOWN_FILE_ENV].to_s.empty?
  end

  # Seconds from the first stop signal to graceshell's final KILL.
  def budget
    Float(ENV.fetch(BUDGET_ENV))
  rescue ArgumentError, KeyError
    nil
  end

  # The shutdown notice, or nil before a stop. No logging and no locks:
  # this is called from signal traps.
  def notice
    path = ENV[SHUTDOWN_FILE_ENV]
    return nil if path.nil? || path.empty?

    # As the Python reader: never follow a symlink nor wait on a FIFO put
    # there, and read a bounded amount.
    text = File.open(path, File::RDONLY | File::NONBLOCK | File::NOFOLLOW) do |file|
      return nil unless file.stat.file?

      file.read(MAX_NOTICE + 1)
    end
    return nil if text.nil? || text.bytesize > MAX_NOTICE

    data = JSON.parse(text)
    data.is_a?(Hash) ? data : nil
  rescue SystemCallError, IOError, JSON::ParserError
    nil
  end

  # True once graceshell has received a stop signal (it writes the notice first).
  def requested?
    path = ENV[SHUTDOWN_FILE_ENV]
    !path.nil? && !path.empty? && File.exist?(path)
  end

  # True once graceshell has gone past the warm phase: its cold step or the kill.
  def escalated?
    step = notice&.fetch("step", 0)
    step.is_a?(Integer) && step.positive?
  end

  # Seconds left until graceshell's final KILL, counted from `stopped_at`
  # (a Time) when the notice is not there yet.
  def remaining(stopped_at = Time.now)
    deadline = notice&.fetch("deadline", nil)
    return deadline - Time.now.to_f if deadline.is_a?(Numeric)

    total = budget
    total && total - (Time.now - stopped_at)
  end

  def ledger_path(job_id)
    dir = ENV[JOBS_DIR_ENV]
    return nil if dir.nil? || dir.empty?

    safe = job_id.to_s.gsub(/[^A-Za-z0-9._-]/, "_")[0, 100].sub(/\A\.+/, "")
    File.join(dir, "#{Process.pid}-#{safe.empty? ? "job" : safe}.json")
  end

  # Records a job; returns the entry's path, or nil outside graceshell. The
  # ledger is a report: a failed write never fails the job.
  def track(job_id, name, **extra)
    path = ledger_path(job_id)
    return nil unless path

    write(path, {id: job_id.to_s, name: name, pid: Process.pid, started_at: Time.now.to_f, **extra})
    path
  rescue SystemCallError, IOError
    nil
  end

  def update(path, **fields)
    return unless path && File.exist?(path)

    write(path, JSON.parse(File.read(path)).merge(fields.transform_keys(&:to_s)))
  rescue SystemCallError, IOError, JSON::ParserError
    nil
  end

  def forget(path)
    File.delete(path) if path
  rescue SystemCallError
    nil
  end

  def write(path, entry)
    temp = File.join(File.dirname(path), ".#{File.basename(path)}.tmp")
    File.write(temp, JSON.generate(entry))
    File.rename(temp, path)
  end

  # Runs `block` with `mod` once the class or module `name` has been defined
  # (its body has ended), or at once if it already is: integrations load
  # through RUBYOPT in every Ruby process of the worker's tree, before the
  # framework, and must change nothing in a process that never loads it.
  def when_defined(name, &block)
    found = lookup(name)
    return block.call(found) if found

    trace = TracePoint.new(:end) do |point|
      next unless point.self.is_a?(Module) && point.self.name == name

      trace.disable
      block.call(point.self)
    end
    trace.enable
  end

  def lookup(name)
    name.split("::").reduce(Object) do |scope, part|
      return nil unless scope.const_defined?(part, false)

      scope.const_get(part, false)
    end
  end
end
