# frozen_string_literal: true

# delayed_job under graceshell, loaded by the delayed_job preset through
# RUBYOPT, so the worker needs no change. Read from delayed_job 4.1
# (lib/delayed/worker.rb, lib/delayed/plugins/clear_locks.rb):
#
# - TERM and INT set the worker's exit flag: it leaves after the job in
#   hand. A worker killed in a job leaves the job locked (locked_by,
#   locked_at) until max_run_time (4 hours by default) has passed; with
#   `raise_signal_exceptions = :term` TERM raises in the job instead, so
#   delayed_job reschedules it and unlocks it, but then the platform's own
#   TERM, which reaches the worker directly on platforms that signal every
#   process, aborts even a job that had time to finish.
# - Here a TERM or INT during graceshell's warm phase only sets the exit
#   flag, whatever raise_signal_exceptions says: the job in hand finishes if
#   it can. Once graceshell has escalated (its cold step, TERM at
#   budget-3s in the preset, rewrites the shutdown notice first), TERM
#   aborts the job, and delayed_job's error path (Worker#handle_failed_job)
#   puts it back as it was, before the KILL: its lock released, its run_at
#   kept (due now) and no attempt used. delayed_job's own reschedule would
#   count an attempt (a job with max_attempts 1 would fail for good) and put
#   it off by 5 s + attempts**4.
# - A worker started after the stop does not start: `delayed_job -n 2 run`
#   (lib/delayed/command.rb, with the daemons gem's `run`) runs its workers
#   one after another in the foreground, so the second would begin, and take
#   jobs, when the first left for the stop.
# - Every job is recorded in graceshell's ledger while it runs; an aborted
#   one keeps its entry ("interrupted": true, "requeued": true when it is
#   rescheduled and unlocked), so graceshell's exit report names it.
#
# Outside graceshell, or in a Ruby process that never loads delayed_job's
# worker, nothing changes.
require_relative "graceshell"

module Graceshell
  module DelayedJob
    # Raised in the job at graceshell's cold step. An Exception, not a
    # StandardError, so that a job's own `rescue => e` does not swallow it.
    class ColdShutdown < Exception # rubocop:disable Lint/InheritException
      def initialize(msg = "graceshell's cold shutdown: the job did not fit in the budget and is rescheduled")
        super
      end
    end

    # Extends the job in hand while its code runs: only then may the cold
    # step abort it (not while delayed_job saves or destroys it).
    module Running
      def invoke_job(*args, &block)
        Thread.current[:graceshell_in_job] = true
        super
      ensure
        Thread.current[:graceshell_in_job] = false
      end
    end

    module Worker
      def trap(signal, command = nil, &handler)
        return super unless %w[TERM INT SIGTERM SIGINT].include?(signal.to_s)

        super(signal) do
          Thread.new { say "Exiting..." } unless stop?
          stop
          if Graceshell.escalated? && Thread.main[:graceshell_in_job]
            Thread.main[:graceshell_in_job] = false
            @graceshell_aborted = true
            raise ColdShutdown
          end
        end
      end

      private :trap

      def start
        return super unless Graceshell.requested?

        say "graceshell: the worker was asked to stop before it started: it takes no job"
      end

      def run(job)
        path = Graceshell.track(job.id, job.name, framework: "delayed_job", queue: job.queue,
                                                  attempts: job.attempts)
        job.extend(Running)
        @graceshell_aborted = false
        result = super
        if @graceshell_aborted
          Graceshell.update(path, interrupted: true, requeued: requeued?(job), attempts: job.attempts)
        else
          Graceshell.forget(path) # finished, or failed by itself: delayed_job owns its retries
        end
        result
      end

      protected

      # Delayed::Worker#handle_failed_job (protected), for the job aborted at
      # graceshell's cold step: back as it was, at once, no attempt used.
      def handle_failed_job(job, error)
        return super unless error.is_a?(ColdShutdown)

        job.unlock
        job.save!
        job_say job, "put back by graceshell's cold shutdown, due now, no attempt used", "warn"
      end

      private

      def requeued?(job)
        !job.destroyed? && job.locked_by.nil? && (!job.respond_to?(:failed_at) || job.failed_at.nil?)
      rescue StandardError
        false
      end
    end
  end
end

if Graceshell.active?
  Graceshell.when_defined("Delayed::Worker") do |worker|
    worker.prepend(Graceshell::DelayedJob::Worker)
  end
end
